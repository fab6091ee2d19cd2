"""A training atlas read chunk by chunk, in memory or backed on disk (``anndata.read_h5ad(path,
backed="r")``): which labelled cells pass QC, their sequencing depth, the highly variable genes (Seurat
flavour, as scanpy computes it) and the per-gene scaling statistics; then scaled minibatches of any cells.

No step holds more than one chunk of the expression matrix; only per-cell and per-gene vectors are kept.
Every statistic is a sum over chunks, so processes that each scan their own share of the chunks (under
``torchrun``) combine their partial sums with one ``reduce`` and all reach the same genes and statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._data import ScaledMatrix
from ._errors import ItClustError
from ._preprocess import (N_DETECT_ROWS, Recipe, as_csr, check_values, lognormalize, mean_std, moments,
                          resolve_input_type)

CHUNK_CELLS = 8192


def _no_reduce(array: np.ndarray) -> np.ndarray:
    return array


@dataclass(frozen=True)
class Shard:
    """This process's share of the chunks, and how partial sums of all processes are added up."""

    rank: int = 0
    world: int = 1
    reduce: Callable[[np.ndarray], np.ndarray] = _no_reduce

    def mine(self, n: int, chunk: int = CHUNK_CELLS):
        """``(start, stop)`` of the chunks of ``range(n)`` this process handles."""
        for k, start in enumerate(range(0, n, chunk)):
            if k % self.world == self.rank:
                yield start, min(start + chunk, n)


def read_rows(X, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (ascending) of ``X`` as an in-memory CSR. Rows close together (a chunk of cells) are read
    as one slice and picked in memory: a backed matrix reads a slice sequentially, but an array of rows one
    row at a time."""
    if len(rows) and rows[-1] - rows[0] < 2 * len(rows):
        return as_csr(X[int(rows[0]) : int(rows[-1]) + 1])[rows - rows[0]]
    return as_csr(X[rows])


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Highly variable genes as ``scanpy.pp.highly_variable_genes(flavor="seurat", n_top_genes=n_top)``.

    ``mean`` and ``var`` (ddof=1) are per-gene moments of the normalised, un-logged values (``expm1`` of
    log-normalised data). Returns a boolean mask: the ``n_top`` genes of highest dispersion normalised
    within 20 bins of mean expression (ties at the cutoff all kept, as scanpy does).
    """
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    frame = pd.DataFrame({"means": np.log1p(mean), "dispersions": np.log(dispersion)})
    frame["mean_bin"] = pd.cut(frame["means"], bins=n_bins)
    stats = frame.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # one gene in its bin: normalised dispersion 1
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[frame["mean_bin"]].set_index(frame.index)
    norm = ((frame["dispersions"] - per_gene["avg"]) / per_gene["dev"]).to_numpy()
    ranked = np.sort(norm[~np.isnan(norm)])[::-1]
    if ranked.size == 0:
        raise ItClustError("no gene varies across the atlas cells; check the data")
    cutoff = ranked[min(n_top, ranked.size) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cutoff


@dataclass
class Atlas:
    """The cells and genes a reference is trained on, and how to read them as network input.

    ``cells`` are the obs positions of the labelled cells that pass QC (ascending); ``gene_columns`` the
    var positions of the selected genes, ``context_columns`` those of every other gene that passed QC (with
    their own ``context_mean``, ``context_std`` and ``context_share``). ``share`` is each gene's mean share
    of a cell's normalised expression (over all of these genes, it sums to 1). ``read`` gives log-normalised
    values of any of those cells.
    """

    X: object
    cells: np.ndarray
    codes: np.ndarray
    cell_types: list[str]
    gene_columns: np.ndarray
    genes: list[str]
    totals: np.ndarray
    input_type: str
    mean: np.ndarray
    std: np.ndarray
    recipe: Recipe
    context_columns: np.ndarray
    context_mean: np.ndarray
    context_std: np.ndarray
    share: np.ndarray
    context_share: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def read(self, index, columns: np.ndarray | None = None) -> sp.csr_matrix:
        """Log-normalised genes ``columns`` (var positions; default the selected genes) of cells ``index``
        (ascending positions into ``cells``)."""
        chunk = read_rows(self.X, self.cells[index])[:, self.gene_columns if columns is None else columns]
        return lognormalize(chunk, self.input_type, self.recipe.target_sum, self.totals[index])

    def in_memory(self) -> ScaledMatrix:
        """All cells as one sparse matrix of the selected genes, scaled per batch (or cached dense)."""
        blocks = [self.read(np.arange(a, b)) for a, b in Shard().mine(self.n_cells)]
        return ScaledMatrix(sp.vstack(blocks, format="csr"), self.mean, self.std, self.recipe.max_value)

    def streamed(self) -> "StreamedMatrix":
        """The cells read from ``X`` batch by batch (for a backed AnnData: from disk)."""
        return StreamedMatrix(self)


class StreamedMatrix:
    """Scaled dense rows read from the atlas on demand; memory is bounded by what is asked for (a batch, a
    chunk)."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self.n_cells, self.n_genes = atlas.n_cells, len(atlas.genes)
        self.mean = torch.as_tensor(atlas.mean)
        self.inv_std = 1.0 / torch.as_tensor(atlas.std)

    def rows(self, index) -> torch.Tensor:
        """Scaled dense rows for ``index`` (ascending row numbers), as :class:`ScaledMatrix` scales them."""
        block = torch.from_numpy(self.atlas.read(index).toarray())
        limit = self.atlas.recipe.max_value
        return ((block - self.mean) * self.inv_std).clamp_(-limit, limit)

    def take(self, rows: np.ndarray) -> ScaledMatrix:
        """The cells ``rows`` (ascending) in memory, as :meth:`Atlas.in_memory` holds them (same scaled rows),
        read chunk by chunk."""
        blocks = [self.atlas.read(rows[lo:hi]) for lo, hi in _spans(rows, CHUNK_CELLS) if hi > lo]
        X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, self.n_genes), dtype=np.float32)
        return ScaledMatrix(X, self.atlas.mean, self.atlas.std, self.atlas.recipe.max_value)


def _spans(rows: np.ndarray, chunk: int):
    """``(lo, hi)``: the positions in ``rows`` (ascending) of the rows in each chunk of ``chunk`` consecutive rows."""
    edges = np.searchsorted(rows, np.arange(0, (rows[-1] + 1 if len(rows) else 0) + chunk, chunk))
    return zip(edges[:-1], edges[1:])


def _qc_cells(X, n_obs: int, labelled: np.ndarray, gene_ok: np.ndarray, recipe: Recipe, shard: Shard):
    """Cells with >= ``min_genes_per_cell`` genes among ``gene_ok``; and in how many of them each gene is seen."""
    passed = np.zeros(n_obs, dtype=np.int64)
    cells_per_gene = np.zeros(len(gene_ok), dtype=np.int64)
    columns = np.flatnonzero(gene_ok)
    for start, stop in shard.mine(n_obs):
        chunk = as_csr(X[start:stop])
        check_values(chunk)
        sub = chunk[:, columns]
        sub.eliminate_zeros()
        ok = labelled[start:stop] & (np.diff(sub.indptr) >= recipe.min_genes_per_cell)
        passed[start:stop] = ok
        cells_per_gene[columns] += np.bincount(sub[ok].indices, minlength=len(columns))
    return shard.reduce(passed).astype(bool), shard.reduce(cells_per_gene)


def scan_atlas(adata, codes: np.ndarray, cell_types: list[str], recipe: Recipe, input_type: str = "auto",
               shard: Shard = Shard()) -> Atlas:
    """Read ``adata`` (in memory or backed) chunk by chunk into an :class:`Atlas`.

    ``codes`` gives each obs row its index in ``cell_types``, or -1 for cells not to train on. QC as
    ItClust: drop genes with the recipe's prefixes (ERCC, MT-), cells with fewer than
    ``min_genes_per_cell`` genes, then genes seen in fewer than ``min_cells_per_gene`` cells. Cells are
    normalised by their depth over the kept genes, then the recipe's number of highly variable genes is
    chosen, and every kept gene's mean, standard deviation and share of the normalised expression computed
    (the other kept genes are the context genes). ``input_type="counts"`` on data that is not integer is refused.
    """
    X = adata.X
    used_type, detected = resolve_input_type(input_type, as_csr(X[: min(N_DETECT_ROWS, adata.n_obs)]))
    if used_type == "counts" and detected != "counts":
        raise ItClustError(f"the atlas holds non-integer values ({detected}?) but counts were asked for; pass raw "
                           "counts (e.g. from a counts layer) or input_type='lognorm'/'tpm'")
    names = adata.var_names.astype(str).str.upper()
    gene_ok = ~np.any([names.str.startswith(p.upper()) for p in recipe.drop_gene_prefixes], axis=0)
    passed, cells_per_gene = _qc_cells(X, adata.n_obs, codes >= 0, gene_ok, recipe, shard)
    cells = np.flatnonzero(passed)
    if len(cells) < 10:
        raise ItClustError(f"only {len(cells)} cells pass QC (>= {recipe.min_genes_per_cell} genes); check the data")
    kept = np.flatnonzero(gene_ok & (cells_per_gene >= recipe.min_cells_per_gene))

    n, g = len(cells), len(kept)
    totals = np.zeros(n, dtype=np.float64)
    sums = np.zeros((4, g))  # normalised values and their squares (HVG), logged values and their squares
    for start, stop in shard.mine(n):
        chunk = read_rows(X, cells[start:stop])[:, kept]
        depth = np.asarray(chunk.sum(axis=1)).ravel()
        totals[start:stop] = depth
        logged = lognormalize(chunk, used_type, recipe.target_sum, depth)
        values = logged.data.astype(np.float64)
        normalised = np.expm1(logged.data).astype(np.float64)
        for row, weights in enumerate((normalised, normalised**2, values, values**2)):
            sums[row] += np.bincount(logged.indices, weights=weights, minlength=g)
    totals, sums = shard.reduce(totals), shard.reduce(sums)

    hvg = seurat_hvg(*moments(sums[0], sums[1], n), min(recipe.n_top_genes, g))
    mean, std = mean_std(sums[2], sums[3], n)
    share = (sums[0] / sums[0].sum()).astype(np.float32)
    present = np.unique(codes[cells])
    recode = np.full(len(cell_types), -1)
    recode[present] = np.arange(len(present))
    return Atlas(
        X=X, cells=cells, codes=recode[codes[cells]], cell_types=[cell_types[k] for k in present],
        gene_columns=kept[hvg], genes=list(adata.var_names[kept[hvg]]), totals=totals.astype(np.float32),
        input_type=used_type, mean=mean[hvg], std=std[hvg], recipe=recipe,
        context_columns=kept[~hvg], context_mean=mean[~hvg], context_std=std[~hvg],
        share=share[hvg], context_share=share[~hvg],
    )
