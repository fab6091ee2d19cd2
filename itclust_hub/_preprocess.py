"""Preprocessing as ItClust does it: QC filters (reference side), per-cell normalisation, log1p,
and per-dataset scaling to zero mean and unit variance clipped at ``max_value``.

The steps are recorded as a :class:`Recipe` inside every reference so a query gets the same treatment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from ._errors import ItClustError

INPUT_TYPES = ("counts", "lognorm", "tpm")
N_DETECT_ROWS = 2000  # the first rows, from which the input type is detected


@dataclass(frozen=True)
class Recipe:
    """How raw data becomes network input; stored in ``config.json`` under ``preprocessing``."""

    min_genes_per_cell: int = 100
    min_cells_per_gene: int = 10
    drop_gene_prefixes: tuple[str, ...] = ("ERCC", "MT-")
    target_sum: float = 1e4
    n_top_genes: int = 3000
    max_value: float = 6.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        d["drop_gene_prefixes"] = tuple(d.get("drop_gene_prefixes", ()))
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ItClustError(f"unknown preprocessing fields {sorted(unknown)}; upgrade itclust-hub")
        return cls(**d)


def as_csr(X) -> sp.csr_matrix:
    """Return ``X`` as float32 CSR without densifying (dense input is converted once)."""
    if sp.issparse(X):
        X = X.tocsr()
        return X if X.dtype == np.float32 else X.astype(np.float32)
    return sp.csr_matrix(np.asarray(X, dtype=np.float32))


def check_values(X: sp.csr_matrix) -> None:
    """Refuse NaN, inf and negative values with a one-line reason."""
    data = X.data
    if not np.isfinite(data).all():
        raise ItClustError("the expression matrix holds NaN or inf values; remove or impute them first")
    if data.size and data.min() < 0:
        raise ItClustError(
            "the expression matrix holds negative values (scaled data?); pass raw counts, "
            "log-normalised values or TPM, e.g. from a layer with layer=... or use_raw=True"
        )


def detect_input_type(X: sp.csr_matrix, n_rows: int = N_DETECT_ROWS) -> str:
    """Guess whether ``X`` holds raw counts, log-normalised values or TPM/CPM-like values.

    Integers are counts; non-integers whose maximum fits a log scale (< 30) are log-normalised;
    other non-integers are taken as TPM/CPM-like (normalised, not logged).
    """
    rows = X[: min(n_rows, X.shape[0])]
    data = rows.data
    if data.size == 0:
        return "counts"
    if np.allclose(data, np.round(data)):
        return "counts"
    return "lognorm" if data.max() < 30 else "tpm"


def resolve_input_type(requested: str, sample: sp.csr_matrix) -> tuple[str, str]:
    """Check ``requested`` (``"auto"`` or one of ``INPUT_TYPES``) and return ``(used, detected)``, the type
    detected on ``sample`` (rows of the data) and the one to use."""
    if requested != "auto" and requested not in INPUT_TYPES:
        raise ItClustError(f"input_type must be 'auto' or one of {INPUT_TYPES}, not {requested!r}")
    detected = detect_input_type(sample)
    return (detected if requested == "auto" else requested), detected


def lognormalize(X: sp.csr_matrix, input_type: str, target_sum: float, totals=None) -> sp.csr_matrix:
    """Normalise each cell to ``target_sum`` and log1p, as fits ``input_type``; returns a new CSR.

    ``totals`` are the per-cell sums used for normalisation (default: the row sums of ``X``); a query
    aligned to fewer genes passes the totals of its full matrix so depth is not distorted.
    """
    X = X.copy()
    if input_type == "lognorm":
        return X
    if totals is None:
        totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr)).astype(np.float32)
    np.log1p(X.data, out=X.data)
    return X


def moments(sums: np.ndarray, squares: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance (ddof=1, as scanpy) from sums and sums of squares over ``n`` cells."""
    mean = sums / max(n, 1)
    return mean, np.clip(squares / max(n, 1) - mean**2, 0, None) * (n / max(n - 1, 1))


def mean_std(sums: np.ndarray, squares: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-gene scaling statistics (float32 mean, and standard deviation with 1 for genes that do not
    vary) from sums and sums of squares over ``n`` cells; see :func:`moments`."""
    mean, var = moments(sums, squares, n)
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
