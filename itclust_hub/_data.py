"""Network input kept sparse: log-normalised cells x genes (CSR, in memory or spilled to a temporary file)
with per-gene mean/std. Dense rows are scaled and clipped one minibatch at a time, so memory is bounded by
the batch (or by ``dense_budget`` when a small matrix is cached dense).

Scaling is ``clip((x - mean) / std, -max_value, max_value)``. A zero entry of gene ``g`` always
scales to the same value ``zero[g]``, so a block of scaled rows is exactly ``zero`` (broadcast) plus a
sparse matrix with the structure of the input: ``delta = scaled(x) - zero[g]`` at the stored entries.
Clipping is applied entry by entry before the split, so the identity holds with clipping. A linear layer
then costs ``delta @ W.T + (W @ zero + b)``: work in proportion to the nonzeros, not cells x genes.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

DENSE_BUDGET_BYTES = 256 * 2**20


class DiskCSR:
    """A read-only CSR matrix whose ``data`` and ``indices`` live in files (float32, int32); ``indptr``
    (one integer per cell) stays in memory. Blocks of rows are read with ``np.fromfile`` (no memory map,
    so reading does not grow the resident set). The folder is removed by :meth:`close` or when the object
    is garbage collected."""

    def __init__(self, folder: Path, indptr: np.ndarray, n_cols: int, owner: bool = True):
        self.folder = Path(folder)
        self.indptr = indptr
        self.shape = (len(indptr) - 1, n_cols)
        self.dtype = np.dtype(np.float32)
        self._data, self._indices = self.folder / "data.f32", self.folder / "indices.i32"
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True) if owner else None

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def block(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as an in-memory CSR."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        data = np.fromfile(self._data, dtype=np.float32, count=hi - lo, offset=4 * lo)
        indices = np.fromfile(self._indices, dtype=np.int32, count=hi - lo, offset=4 * lo)
        return sp.csr_matrix((data, indices, (self.indptr[start : stop + 1] - lo)), shape=(stop - start, self.shape[1]))

    def take(self, rows: np.ndarray, block_rows: int = 65536) -> sp.csr_matrix:
        """Rows ``rows`` (ascending) as an in-memory CSR, read block by block."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = []
        for start in range(0, self.shape[0], block_rows):
            stop = min(start + block_rows, self.shape[0])
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                parts.append(self.block(start, stop)[rows[lo:hi] - start])
        if not parts:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        return sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]

    def __getitem__(self, index) -> sp.csr_matrix:
        """Rows by slice (step 1) or by an array of row numbers (any order), as an in-memory CSR."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                return self.block(start, max(start, stop))
            index = np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        order = np.argsort(index, kind="stable")
        taken = self.take(index[order])
        return taken[np.argsort(order)]

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class CSRBuilder:
    """Collects CSR row blocks; keeps them in memory up to ``budget`` bytes, then spills every block to a
    temporary :class:`DiskCSR` (under ``spill_dir``, default the system temporary folder)."""

    def __init__(self, n_cols: int, budget: int, spill_dir=None):
        self.n_cols, self.budget, self.spill_dir = n_cols, budget, spill_dir
        self.blocks: list[sp.csr_matrix] = []
        self.nbytes = 0
        self.folder: Path | None = None
        self.indptr_parts = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0

    def append(self, block: sp.csr_matrix) -> None:
        self.blocks.append(block)
        self.nbytes += block.data.nbytes + block.indices.nbytes
        if self.folder is not None or self.nbytes > self.budget:
            self._spill()

    def spill_now(self) -> None:
        """Write to disk from now on, whatever the size (for a matrix known to exceed the budget)."""
        self._spill()

    def _spill(self) -> None:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="itclust-query-", dir=self.spill_dir))
        with open(self.folder / "data.f32", "ab") as fd, open(self.folder / "indices.i32", "ab") as fi:
            for block in self.blocks:
                block.data.astype(np.float32, copy=False).tofile(fd)
                block.indices.astype(np.int32, copy=False).tofile(fi)
                self.indptr_parts.append(block.indptr[1:].astype(np.int64) + self.nnz)
                self.nnz += block.nnz
        self.blocks = []

    def finish(self):
        """The collected rows: a ``csr_matrix`` when they fit the budget, else a :class:`DiskCSR`."""
        if self.folder is not None:
            return DiskCSR(self.folder, np.concatenate(self.indptr_parts), self.n_cols)
        if not self.blocks:
            return sp.csr_matrix((0, self.n_cols), dtype=np.float32)
        data = np.concatenate([b.data for b in self.blocks])
        indices = np.concatenate([b.indices for b in self.blocks])
        offsets = np.cumsum([0] + [b.nnz for b in self.blocks[:-1]])
        indptr = np.concatenate([np.zeros(1, np.int64)] + [b.indptr[1:] + o for b, o in zip(self.blocks, offsets)])
        n_rows = sum(b.shape[0] for b in self.blocks)
        self.blocks = []
        return sp.csr_matrix((data, indices, indptr), shape=(n_rows, self.n_cols))

    def discard(self) -> None:
        self.blocks = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class ScaledMatrix:
    """Log-normalised cells x genes (CSR or :class:`DiskCSR`) with per-gene mean/std; yields scaled rows.

    Genes the data does not measure are all-zero columns with mean 0 and std 1, so they scale to 0.
    """

    def __init__(self, X, mean, std, max_value: float, dense_budget: int = DENSE_BUDGET_BYTES):
        self.X = X
        self.n_cells, self.n_genes = X.shape
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32)
        self.max_value = max_value
        self.dense_budget = dense_budget
        self.zero = self._scale(torch.zeros(1, self.n_genes))[0]  # the scaled value of a zero entry, per gene
        self._np = (self.mean.numpy(), self.inv_std.numpy(), self.zero.numpy())
        self._dense = None
        if not self.on_disk and self.n_cells * self.n_genes * 4 <= dense_budget:
            self._dense = self._scale(torch.from_numpy(_toarray(X)))

    @property
    def on_disk(self) -> bool:
        return isinstance(self.X, DiskCSR)

    @property
    def density(self) -> float:
        """Share of stored entries among cells x genes."""
        return self.X.nnz / max(self.n_cells * self.n_genes, 1)

    def _scale(self, block: torch.Tensor) -> torch.Tensor:
        return ((block - self.mean) * self.inv_std).clamp_(-self.max_value, self.max_value)

    def block(self, start: int, stop: int) -> sp.csr_matrix:
        """Log-normalised (unscaled) rows ``start:stop`` as an in-memory CSR."""
        return self.X.block(start, stop) if self.on_disk else self.X[start:stop]

    def rows(self, index) -> torch.Tensor:
        """Scaled dense rows for ``index`` (a slice or an array of row numbers)."""
        if self._dense is not None:
            return self._dense[index if isinstance(index, slice) else torch.as_tensor(index)]
        return self._scale(torch.from_numpy(_toarray(self.X[index])))

    def take(self, rows: np.ndarray) -> "ScaledMatrix":
        """The rows ``rows`` (ascending) as an in-memory :class:`ScaledMatrix` with the same statistics.

        Its scaled rows are identical to those of this matrix; only where they are read from differs.
        """
        return self._with_rows(self.X.take(rows) if self.on_disk else self.X[rows], rows)

    def stored_rows(self) -> "ScaledMatrix":
        """The rows that store at least one entry, in order, sharing this matrix's storage (a spilled one's
        files too, which this matrix still owns): a row without entries drops out of ``indptr`` alone."""
        indptr = np.asarray(self.X.indptr)
        kept = np.flatnonzero(np.diff(indptr) > 0)
        shared = np.concatenate([indptr[:1], indptr[kept + 1]])
        X = (DiskCSR(self.X.folder, shared, self.n_genes, owner=False) if self.on_disk
             else sp.csr_matrix((self.X.data, self.X.indices, shared), shape=(len(kept), self.n_genes)))
        return self._with_rows(X, kept)

    def _with_rows(self, X, rows: np.ndarray) -> "ScaledMatrix":
        """A matrix of this one's statistics over ``X``, this matrix's rows ``rows``."""
        out = ScaledMatrix.__new__(ScaledMatrix)
        out.__dict__.update(self.__dict__)
        out.X, out.n_cells = X, X.shape[0]
        out._dense = self._dense[torch.as_tensor(rows)] if self._dense is not None else None
        if out._dense is None and not isinstance(X, DiskCSR) and X.shape[0] * self.n_genes * 4 <= self.dense_budget:
            out._dense = self._scale(torch.from_numpy(_toarray(X)))
        return out

    def delta(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """``scaled(block) - zero`` as a CSR with ``block``'s structure (see the module docstring)."""
        mean, inv_std, zero = self._np
        j = block.indices
        values = np.clip((block.data - mean[j]) * inv_std[j], -self.max_value, self.max_value)
        values -= zero[j]
        return sp.csr_matrix((values.astype(np.float32, copy=False), j, block.indptr), shape=block.shape)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(row_numbers, scaled_rows)``: shuffled when ``rng`` is given, in order otherwise."""
        order = rng.permutation(self.n_cells) if rng is not None else None
        for start in range(0, self.n_cells, batch_size):
            if order is None:
                numbers = np.arange(start, min(start + batch_size, self.n_cells))
                yield numbers, self.rows(slice(start, start + len(numbers)))
            else:
                numbers = np.sort(order[start : start + batch_size])
                yield numbers, self.rows(numbers)

    def close(self) -> None:
        """Remove the temporary files of a spilled matrix (no-op in memory)."""
        if self.on_disk:
            self.X.close()


def torch_csr(matrix: sp.csr_matrix, device="cpu") -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor on ``device`` (shares memory on the CPU)."""
    index = np.int32 if matrix.nnz < 2**31 - 1 and max(matrix.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        tensor = torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(index, copy=False)),
            torch.from_numpy(matrix.indices.astype(index, copy=False)),
            torch.from_numpy(matrix.data.astype(np.float32, copy=False)), size=matrix.shape, check_invariants=False)
        return tensor if torch.device(device).type == "cpu" else tensor.to(device)


def _toarray(X) -> np.ndarray:
    dense = X.toarray()
    return dense if dense.dtype == np.float32 else dense.astype(np.float32)
