"""Turn a user's AnnData into network input for a reference: checks, gene alignment (with orthologs),
count-type detection, normalisation and scaling (with the reference's or the query's own gene statistics),
chunk by chunk."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._data import DENSE_BUDGET_BYTES, CSRBuilder, ScaledMatrix
from ._errors import ItClustError
from ._genes import (GeneAlignment, OrganismChoice, align_genes, choose_organism, load_orthologs, normalize_organism,
                     ortholog_map)
from ._overlap import low_overlap, measured_accuracy
from ._preprocess import N_DETECT_ROWS, Recipe, as_csr, check_values, lognormalize, resolve_input_type
from ._preprocess import mean_std

# Least share of the reference's genes a query must measure (network and context genes) to be read: panels
# down to 2% read above logistic regression on the same genes on blood and pancreas, and blood falls off
# under it (benchmarks/RESULTS.md, "Accuracy against gene overlap").
MIN_OVERLAP = 0.02
CHUNK_BYTES = 128 * 2**20  # raw nonzeros read at a time (float32 value + int32 index each)
MIN_CHUNK_CELLS = 64
ALIGNED_BUDGET_BYTES = 512 * 2**20  # the aligned matrix is spilled to a temporary file above this
SCALES = ("auto", "reference", "own")
REFERENCE_SCALE_MIN_OVERLAP = 0.5  # "auto" scaling uses the reference's statistics from this gene overlap up
# A query measuring less than this share of the reference genes (a targeted panel) also reads the reference's
# context genes it measures; above it the missing genes are few, and every gene of a whole-transcriptome
# query would multiply the aligned matrix's size.
CONTEXT_MAX_OVERLAP = 0.5


def check_anndata(adata) -> None:
    """Refuse anything that is not a non-empty AnnData."""
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise ItClustError(f"expected an AnnData, got {type(adata).__name__}; read your file with itclust_hub.read_query()")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ItClustError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes)")


def _matrix(adata, layer: str | None, use_raw: bool):
    """The expression the user asked for, with its genes: ``(X, var, var_names)`` of ``adata.raw`` with
    ``use_raw``, else ``adata.layers[layer]`` with ``adata.var``, else ``adata.X``; nothing is copied."""
    if use_raw:
        if adata.raw is None:
            raise ItClustError("use_raw=True but the AnnData has no .raw; drop use_raw or pick a layer=")
        return adata.raw.X, adata.raw.var, adata.raw.var_names
    if layer is not None:
        if layer not in adata.layers:
            raise ItClustError(f"layer {layer!r} not found; available layers: {', '.join(adata.layers) or 'none'} "
                               "(or drop layer= to use .X)")
        return adata.layers[layer], adata.var, adata.var_names
    return adata.X, adata.var, adata.var_names


def _chunks(X, n_obs: int, size: int):
    for start in range(0, n_obs, size):
        if isinstance(X, sp.csr_matrix | sp.csr_array) and X.dtype == np.float32:  # rows as views, no copy
            stop = min(start + size, n_obs)
            lo, hi = X.indptr[start], X.indptr[stop]
            view = sp.csr_matrix((stop - start, X.shape[1]), dtype=np.float32)
            view.data, view.indices, view.indptr = X.data[lo:hi], X.indices[lo:hi], X.indptr[start : stop + 1] - lo
            yield view  # built without scipy's checks, which copy a slice of a larger array
        else:
            yield as_csr(X[start : start + size])


def _chunk_cells(sample: sp.csr_matrix, budget: int) -> int:
    """Cells per chunk so that one chunk holds about ``min(CHUNK_BYTES, budget / 4)`` bytes of nonzeros."""
    per_cell = 8 * max(sample.nnz / max(sample.shape[0], 1), 1.0)
    return max(MIN_CHUNK_CELLS, int(min(CHUNK_BYTES, budget // 4) // per_cell))


def _column_map(alignment: GeneAlignment, context: GeneAlignment | None) -> tuple[np.ndarray, np.ndarray]:
    """Query columns that feed a reference gene (ascending) and the column each one feeds: the reference
    genes', then (with ``context``) one after them per context gene the query measures."""
    coo = alignment.matrix.tocoo()
    rows, cols = coo.row, coo.col
    if context is not None:
        extra = context.matrix.tocoo()
        rank = np.cumsum(context.present) - 1 + alignment.n_reference
        rows, cols = np.concatenate([rows, extra.row]), np.concatenate([cols, rank[extra.col]])
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int32)


def _align(chunk: sp.csr_matrix, columns: tuple[np.ndarray, np.ndarray], n_columns: int) -> sp.csr_matrix:
    """``chunk @ alignment.matrix`` for a 0/1 matrix with at most one 1 per row and column: the query's
    entries moved to their reference columns (same values, no arithmetic; stored zeros dropped, as the
    sparse product drops them)."""
    used, target = columns
    picked = chunk[:, used]
    aligned = sp.csr_matrix((picked.data, target[picked.indices], picked.indptr), shape=(chunk.shape[0], n_columns))
    if aligned.nnz and not aligned.data.all():
        aligned.eliminate_zeros()
    return aligned


def _row_sums(chunk: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """``chunk[:, columns].sum(axis=1)`` (``columns`` a boolean mask) without copying the chunk (exact for
    counts, which float32 sums hold exactly up to 2**24)."""
    return chunk @ columns.astype(chunk.dtype)


@dataclass
class PreparedQuery:
    """A query ready for the network, and what was assumed on the way."""

    data: ScaledMatrix
    alignment: GeneAlignment
    organism: OrganismChoice  # the query's, and how it was found
    input_type: str
    input_type_detected: str
    scale: str
    empty: np.ndarray  # cells with no expression over the columns read (reference genes, context genes)
    context_present: np.ndarray | None = None  # context genes the query measures (columns after the reference's)
    depth_share: float | None = None  # share of a reference cell's expression a panel's genes hold (None: not a panel)

    def summary(self) -> dict:
        context = 0 if self.context_present is None else int(self.context_present.sum())
        return {"query_organism": self.organism.organism, "organism_choice": self.organism.summary(),
                "input_type": self.input_type, "input_type_detected": self.input_type_detected,
                "scale": self.scale, "genes": self.alignment.summary(), "context_genes": context,
                "depth_share": self.depth_share, "empty_cells": int(self.empty.sum())}


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
    min_overlap: float = MIN_OVERLAP,
    scale: str = "own",
    reference_stats: tuple[np.ndarray, np.ndarray] | None = None,
    context: tuple[list[str], list[str | None] | None, tuple[np.ndarray, np.ndarray]] | None = None,
    shares: tuple[np.ndarray, np.ndarray] | None = None,
    memory_budget: int = ALIGNED_BUDGET_BYTES,
    spill_dir=None,
) -> PreparedQuery:
    """Align, normalise and scale a query to a reference's genes without densifying it.

    Reads ``X`` (or ``layer``/``raw``) in chunks of rows, so a backed AnnData streams from disk, and makes
    one pass over it (two when the query has duplicated gene names: the most expressed copy is kept).
    The aligned log-normalised matrix stays in memory while it fits ``memory_budget`` bytes; a larger one
    is written to a temporary folder (``spill_dir``, default the system's) and read back chunk by chunk,
    so memory is bounded by the chunk, not the query. Genes are scaled with the query's own mean and
    standard deviation (``scale="own"``) or with ``reference_stats``, the reference's (``"reference"``). Genes
    the query lacks scale to 0; the reference fills them in (``_impute``). ``"auto"`` takes the reference's
    statistics when the query is of the reference's organism and measures at least
    ``REFERENCE_SCALE_MIN_OVERLAP`` of its genes, else its own. ``context`` (symbols, Ensembl IDs, mean and
    standard deviation of the reference's context genes) adds a column per context gene the query measures
    after the reference genes' when it measures less than ``CONTEXT_MAX_OVERLAP`` of those. Such a panel's
    cells (counts or TPM) are normalised by their depth over the reference and context genes they measure,
    divided by the share of a reference cell's expression those genes hold (summed from ``shares``, each
    reference and context gene's mean share): an estimate of the depth over all of them, which the
    reference's cells were normalised by. ``query_organism`` (any spelling :func:`~itclust_hub._genes.normalize_organism`
    takes) names the query's organism; without it the organism its gene names are written as is taken
    (:func:`~itclust_hub._genes.choose_organism`), the reference's when they cannot tell; genes of another
    organism are renamed through the ortholog table. ``prepared.empty`` marks the cells with no expression
    over the columns read; the query's own statistics leave them out. Call
    ``prepared.data.close()`` when done (the files are also removed when the object is garbage collected).
    """
    check_anndata(adata)
    X, var, var_names = _matrix(adata, layer, use_raw)
    if scale not in SCALES:
        raise ItClustError(f"scale must be one of {SCALES}, not {scale!r}")
    organism = normalize_organism(organism, strict=False)
    if query_organism is not None:
        query_organism = normalize_organism(
            query_organism, what="query_organism", also=() if orthologs is None else load_orthologs(orthologs).columns,
            hint="" if orthologs is not None else "; for another, pass orthologs= a table with a column per organism")
    choice = choose_organism(query_organism, organism, var, var_names, gene_key=gene_key)
    rename = None if choice.organism == organism else ortholog_map(choice.organism, organism, orthologs)
    upper = var_names.astype(str).str.upper()
    counted = ~np.any([upper.str.startswith(p.upper()) for p in recipe.drop_gene_prefixes], axis=0)
    n_obs = adata.n_obs
    sample = as_csr(X[:N_DETECT_ROWS])
    check_values(sample)
    used, detected = resolve_input_type(input_type, sample)
    size = _chunk_cells(sample, memory_budget)
    align = lambda symbols, ids, totals: align_genes(  # noqa: E731
        var, var_names, symbols, _ids(ids), gene_key=gene_key, rename=rename, gene_totals=totals)

    def align_both(totals):  # the reference genes, then (a panel) the context genes the query measures
        alignment = align(genes, gene_ids, totals)
        if context is None or not len(context[0]) or alignment.n_overlap >= CONTEXT_MAX_OVERLAP * alignment.n_reference:
            return alignment, None
        try:
            return alignment, align(context[0], context[1], totals)
        except ItClustError:  # the query measures none of the context genes
            return alignment, None

    alignment, context_alignment = align_both(None)
    _check_readable(alignment, context_alignment, min_overlap)
    gene_totals = None
    if alignment.n_duplicates:  # which copy of a duplicated gene is most expressed: one extra pass
        gene_totals = np.zeros(len(var_names))
        for chunk in _chunks(X, n_obs, size):
            check_values(chunk)
            gene_totals += np.asarray(chunk.sum(axis=0)).ravel()
        alignment, context_alignment = align_both(gene_totals)
    n_ref = alignment.n_reference
    columns = _column_map(alignment, context_alignment)
    depth_share = None
    if context_alignment is not None and shares is not None and used != "lognorm":
        depth_share = float(shares[0][alignment.present].sum() + shares[1][context_alignment.present].sum())
    n_columns = n_ref + (0 if context_alignment is None else context_alignment.n_overlap)
    if scale == "auto":
        same_species = rename is None
        scale = "reference" if same_species and alignment.n_overlap >= REFERENCE_SCALE_MIN_OVERLAP * n_ref else "own"
    sums, squares = np.zeros(n_columns), np.zeros(n_columns)
    builder = CSRBuilder(n_columns, memory_budget, spill_dir)
    expected = 8 * _align(sample, columns, n_columns).nnz / max(sample.shape[0], 1) * n_obs
    if expected > memory_budget:  # spill from the first chunk rather than after filling the budget
        builder.spill_now()
    try:
        for chunk in _chunks(X, n_obs, size):
            check_values(chunk)
            aligned = _align(chunk, columns, n_columns)
            if depth_share is not None:
                totals = np.asarray(aligned.sum(axis=1)).ravel() / depth_share
            else:
                totals = _row_sums(chunk, counted) if used != "lognorm" else None
            aligned = lognormalize(aligned, used, recipe.target_sum, totals)
            if scale == "own":
                values = aligned.data.astype(np.float64)
                sums += np.bincount(aligned.indices, weights=values, minlength=n_columns)
                squares += np.bincount(aligned.indices, weights=values * values, minlength=n_columns)
            builder.append(aligned)
        X_aligned = builder.finish()
    except BaseException:
        builder.discard()
        raise
    empty = np.diff(X_aligned.indptr) == 0  # as ScaledMatrix.stored_rows leaves them out
    if scale == "own":  # over the cells that express any of the columns
        mean, std = mean_std(sums, squares, n_obs - int(empty.sum()))
    else:
        present = alignment.present
        mean = np.where(present, reference_stats[0], 0).astype(np.float32)
        std = np.where(present, reference_stats[1], 1).astype(np.float32)
        if context_alignment is not None:
            measured = context_alignment.present
            mean = np.concatenate([mean, context[2][0][measured]]).astype(np.float32)
            std = np.concatenate([std, context[2][1][measured]]).astype(np.float32)
    data = ScaledMatrix(X_aligned, mean, std, recipe.max_value, dense_budget=min(DENSE_BUDGET_BYTES, memory_budget))
    return PreparedQuery(data, alignment, choice, used, detected, scale, empty,
                         None if context_alignment is None else context_alignment.present, depth_share)


def _check_readable(alignment: GeneAlignment, context: GeneAlignment | None, min_overlap: float) -> None:
    """Refuse a query measuring fewer than ``min_overlap`` x the number of reference genes of the genes the
    reference reads (its reference genes and context genes); warn, quoting the accuracy measured on real panels
    at a similar overlap (:mod:`._overlap`), when only its context genes carry it there or when that overlap is
    under the one from which up the measured accuracy held."""
    n_ref, n_network = alignment.n_reference, alignment.n_overlap
    n_context = 0 if context is None else context.n_overlap
    least = int(np.ceil(min_overlap * n_ref))
    if n_network + n_context < least:
        raise ItClustError(
            f"only {n_network + n_context} genes the reference reads are in the query ({n_network} of its {n_ref} "
            f"reference genes, {n_context} context genes), below the minimum {least} ({min_overlap:.0%} of "
            f"{n_ref}); check gene names, gene_key=... or query_organism=...")
    overlap = (n_network + n_context) / n_ref
    if n_network < least or low_overlap(overlap):
        warnings.warn(
            f"the query measures only {n_network} of the reference's {n_ref} genes ({n_network / n_ref:.1%}) and "
            f"{n_context} of its context genes; labels are less reliable at this overlap: {measured_accuracy(overlap)}",
            UserWarning, stacklevel=4)


def _ids(gene_ids: list[str | None] | None) -> list[str] | None:
    """Reference Ensembl IDs as :func:`align_genes` takes them (None when the reference has none)."""
    return None if gene_ids is None or all(g is None for g in gene_ids) else [g or "" for g in gene_ids]
