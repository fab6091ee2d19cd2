"""Genes a query does not measure, filled in from the reference's gene covariance.

A reference keeps a probabilistic PCA of its scaled training cells: ``loadings`` W (genes x components)
and the residual ``noise`` variance s2, so that a cell's scaled expression is modelled as x = W z + e with
z ~ N(0, I) and e ~ N(0, s2 I). Given the genes a query measures (p), the expected value of the missing
ones (m) is ``W_m (W_p' W_p + s2 I)^-1 W_p' x_p``: a linear map of the present genes, which the encoder's
first layer applies through its weights (:class:`ImputingLinear`), so imputation costs nothing per cell.

A query that measures few of the reference's genes (a targeted panel) often measures many others. The
reference also keeps ``context`` loadings: each other gene the atlas measures, regressed on the training
cells' latent positions, with its own residual noise. Those genes then sharpen the latent position
(factor analysis: each gene weighted by its inverse noise) and enter the first layer as extra inputs. On
held-out Baron donors with 25% / 10% of all genes measured (benchmarks/RESULTS.md, seeds 0-2) they lift
accuracy 0.949 -> 0.962 and 0.901 -> 0.925.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ._network import Encoder

# Held-out Baron donors, 3,000 genes, 25% / 10% of them measured: squared error of the filled-in genes
# is lowest with 20 components (5, 10, 30, 50, 100 and 200 all do worse on each of three donors).
N_COMPONENTS = 20
NOISE_FLOOR = 1e-6


def gene_loadings(second_moment: np.ndarray, n_cells: int, n_components: int = N_COMPONENTS) -> tuple[np.ndarray, float]:
    """Maximum-likelihood probabilistic PCA from the genes' summed products ``X'X`` over ``n_cells``
    scaled cells (mean about 0 by construction): loadings (genes x components, float32) and noise variance.

    Uses ``min(n_components, genes - 1)`` components; the noise variance is the mean of the remaining
    eigenvalues of the covariance.
    """
    values, vectors = np.linalg.eigh(second_moment / max(n_cells - 1, 1))
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    k = max(min(n_components, len(values) - 1), 1)
    noise = float(values[k:].mean()) if len(values) > k else 0.0
    loadings = vectors[:, :k] * np.sqrt(np.clip(values[:k] - noise, 0, None))
    return loadings.astype(np.float32), noise


def context_loadings(latent_products: np.ndarray, cross_products: np.ndarray, squares: np.ndarray,
                     n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares loadings of context genes on the latent positions Z of ``n_cells`` training cells, from
    ``Z'Z`` (components x components), ``Z'X`` (components x context genes) and the genes' summed squares:
    loadings (context genes x components, float32) and each gene's residual variance (float32)."""
    loadings = np.linalg.solve(latent_products, cross_products)
    residual = (squares - (loadings * cross_products).sum(0)) / max(n_cells - 1, 1)
    return loadings.T.astype(np.float32), np.clip(residual, NOISE_FLOOR, None).astype(np.float32)


def latent_map(loadings: torch.Tensor, noise: torch.Tensor | float) -> torch.Tensor:
    """S (genes x components): a cell's expected latent position is ``x @ S`` given genes with ``loadings``
    and noise variances ``noise`` (per gene, or one for all): ``Psi^-1 W (W' Psi^-1 W + I)^-1``."""
    noise = torch.as_tensor(noise, dtype=loadings.dtype, device=loadings.device).clamp(min=NOISE_FLOOR)
    weighted = loadings / (noise[:, None] if noise.ndim else noise)
    gram = loadings.T @ weighted + torch.eye(loadings.shape[1], dtype=loadings.dtype, device=loadings.device)
    return torch.linalg.solve(gram, weighted.T).T


def fill_missing(x: torch.Tensor, present: torch.Tensor, loadings: torch.Tensor, noise: float) -> torch.Tensor:
    """``x`` (cells x genes, scaled) with the genes outside ``present`` set to their expected values."""
    if bool(present.all()):
        return x
    if not present.any():
        return torch.zeros_like(x)
    W = loadings.to(x.device, x.dtype)
    present = present.to(x.device)
    out = x.clone()
    out[:, ~present] = (x[:, present] @ latent_map(W[present], noise)) @ W[~present].T
    return out


class ImputingLinear(nn.Module):
    """An encoder's first layer reading only the genes a query measures: present reference genes at their
    own columns (missing ones are 0) and then any context genes. Its weights stay those over every
    reference gene and are what fine-tuning trains; the missing genes' share is read through the fixed
    imputation map, so the layer computes ``linear(filled x)`` at every step."""

    def __init__(self, linear: nn.Linear, present: torch.Tensor, to_latent: torch.Tensor, missing_loadings: torch.Tensor):
        super().__init__()
        self.linear, self.out_features = linear, linear.out_features
        # column positions rather than masks: indexing by them needs no device sync in the per-batch loop
        self.register_buffer("present_columns", present.nonzero().flatten())
        self.register_buffer("missing_columns", (~present).nonzero().flatten())
        self.register_buffer("to_latent", to_latent.float())  # inputs x components
        self.register_buffer("missing_loadings", missing_loadings.float())  # missing genes x components

    @property
    def weight(self) -> torch.Tensor:
        """Hidden x inputs: the trained weights of the present genes plus the missing genes' read-out."""
        w = self.linear.weight
        read = (w[:, self.missing_columns] @ self.missing_loadings) @ self.to_latent.T
        n_present = len(self.present_columns)
        own = torch.zeros_like(w)
        own[:, self.present_columns] = w[:, self.present_columns] + read[:, :n_present]
        return torch.cat([own, read[:, n_present:]], dim=1)

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def impute_missing(encoder: Encoder, loadings: torch.Tensor, noise: float, present: np.ndarray,
                   context: tuple[torch.Tensor, torch.Tensor] | None = None) -> Encoder:
    """A copy of ``encoder`` that reads the expected values of the genes outside ``present`` (a boolean
    mask over the reference's genes) from the present ones (its first layer an :class:`ImputingLinear`);
    ``encoder`` itself is returned when every gene is present.

    ``context`` (loadings, noise variances) of context genes the query measures adds them as inputs after
    the reference's genes, in that order: the copy then reads ``genes + context genes`` columns.
    """
    present = torch.as_tensor(np.asarray(present, dtype=bool))
    if bool(present.all()):
        return encoder
    W = loadings.double()
    inputs, noises = W[present], torch.full((int(present.sum()),), noise, dtype=W.dtype)
    if context is not None:
        inputs = torch.cat([inputs, context[0].double()])
        noises = torch.cat([noises, context[1].double()])
    out = copy.deepcopy(encoder)
    out.layers[0] = ImputingLinear(out.layers[0], present, latent_map(inputs, noises), W[~present])
    return out
