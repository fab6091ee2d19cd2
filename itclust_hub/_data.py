"""Network input streamed from a sparse matrix: each minibatch is densified, scaled and clipped alone,
so memory is bounded by the batch (or by ``dense_budget`` when a small matrix is cached dense)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

DENSE_BUDGET_BYTES = 256 * 2**20


class ScaledMatrix:
    """Log-normalised cells x genes (CSR) with per-gene mean/std; yields scaled dense batches.

    Genes the data does not measure are all-zero columns, so they stay at the scaled mean (0); ``gain``
    multiplies the scaled values so that activations keep their size when genes are missing.
    """

    def __init__(self, X: sp.csr_matrix, mean, std, max_value: float, gain: float = 1.0,
                 dense_budget: int = DENSE_BUDGET_BYTES):
        self.X = X
        self.n_cells, self.n_genes = X.shape
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32)
        self.max_value = max_value
        self.gain = gain
        self._dense = None
        if self.n_cells * self.n_genes * 4 <= dense_budget:
            self._dense = self._scale(torch.from_numpy(X.toarray()))

    def _scale(self, block: torch.Tensor) -> torch.Tensor:
        scaled = ((block - self.mean) * self.inv_std).clamp_(-self.max_value, self.max_value)
        return scaled.mul_(self.gain) if self.gain != 1.0 else scaled

    def rows(self, index) -> torch.Tensor:
        """Scaled dense rows for ``index`` (a slice or an array of row numbers)."""
        if self._dense is not None:
            return self._dense[index if isinstance(index, slice) else torch.as_tensor(index)]
        return self._scale(torch.from_numpy(self.X[index].toarray()))

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
