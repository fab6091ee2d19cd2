"""Turn a user's AnnData into network input for a reference: checks, gene alignment (with orthologs),
count-type detection, normalisation and the query's own scaling statistics, chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._data import ScaledMatrix
from ._errors import ItClustError
from ._genes import GeneAlignment, align_genes, ortholog_map
from ._preprocess import INPUT_TYPES, Recipe, as_csr, check_values, detect_input_type, gene_mean_std, lognormalize

CHUNK_CELLS = 20000


def check_anndata(adata) -> None:
    """Refuse anything that is not a non-empty AnnData."""
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise ItClustError(f"expected an AnnData, got {type(adata).__name__}; read your file with itclust_hub.read_query()")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ItClustError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")


def _matrix(adata, layer: str | None, use_raw: bool):
    if use_raw:
        if adata.raw is None:
            raise ItClustError("use_raw=True but the AnnData has no .raw; drop use_raw or pick a layer=")
        return adata.raw.X, adata.raw.var, adata.raw.var_names
    if layer is not None:
        if layer not in adata.layers:
            raise ItClustError(f"layer {layer!r} not found (have {list(adata.layers)})")
        return adata.layers[layer], adata.var, adata.var_names
    return adata.X, adata.var, adata.var_names


def _chunks(X, n_obs: int):
    for start in range(0, n_obs, CHUNK_CELLS):
        yield as_csr(X[start : start + CHUNK_CELLS])


@dataclass
class PreparedQuery:
    """A query ready for the network, and what was assumed on the way."""

    data: ScaledMatrix
    alignment: GeneAlignment
    input_type: str
    input_type_detected: str

    def summary(self) -> dict:
        return {"input_type": self.input_type, "input_type_detected": self.input_type_detected,
                "genes": self.alignment.summary()}


def prepare_query(
    adata,
    *,
    genes: list[str],
    gene_ids: list[str | None] | None,
    organism: str,
    recipe: Recipe,
    input_type: str = "auto",
    gene_key: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    query_organism: str | None = None,
    orthologs=None,
    min_overlap: float = 0.05,
) -> PreparedQuery:
    """Align, normalise and scale a query to a reference's genes without densifying it.

    Reads ``X`` (or ``layer``/``raw``) in chunks of rows, so a backed AnnData streams from disk.
    """
    check_anndata(adata)
    X, var, var_names = _matrix(adata, layer, use_raw)
    if input_type != "auto" and input_type not in INPUT_TYPES:
        raise ItClustError(f"input_type must be 'auto' or one of {INPUT_TYPES}, not {input_type!r}")
    rename = None
    if query_organism is not None and query_organism != organism:
        rename = ortholog_map(query_organism, organism, orthologs)
    upper = var_names.astype(str).str.upper()
    counted = ~np.any([upper.str.startswith(p.upper()) for p in recipe.drop_gene_prefixes], axis=0)
    gene_totals = np.zeros(len(var_names))
    for chunk in _chunks(X, adata.n_obs):
        check_values(chunk)
        gene_totals += np.asarray(chunk.sum(axis=0)).ravel()
    ids = None if gene_ids is None or all(g is None for g in gene_ids) else [g or "" for g in gene_ids]
    alignment = align_genes(var, var_names, genes, ids, gene_key=gene_key, rename=rename,
                            gene_totals=gene_totals, min_overlap=min_overlap)
    detected = detect_input_type(next(_chunks(X, adata.n_obs)))
    used = detected if input_type == "auto" else input_type
    aligned = []
    for chunk in _chunks(X, adata.n_obs):
        totals = np.asarray(chunk[:, counted].sum(axis=1)).ravel() if used != "lognorm" else None
        aligned.append(lognormalize(as_csr(chunk @ alignment.matrix), used, recipe.target_sum, totals))
    X_aligned = sp.vstack(aligned, format="csr") if len(aligned) > 1 else aligned[0]
    mean, std = gene_mean_std(X_aligned)
    gain = alignment.n_reference / alignment.n_overlap if recipe.rescale_missing else 1.0
    return PreparedQuery(ScaledMatrix(X_aligned, mean, std, recipe.max_value, gain), alignment, used, detected)
