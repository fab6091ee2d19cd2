"""The ItClust network: a stacked encoder and a Student-t clustering layer over learned centroids."""

from __future__ import annotations

import torch
from torch import nn

# A cell's reported probabilities are its soft assignment q to the clusters raised to this power and renormalised
# (DEC's target distribution without its cluster-frequency term, which could change the cell's most likely
# cluster). q itself is under-confident: on the benchmark's nine pairs (seeds 0-2; benchmarks/RESULTS.md) the
# expected calibration error is 0.20-0.42 for q and 0.03-0.08 for q squared, with the labels unchanged.
PROBABILITY_POWER = 2


def hidden_dims_for(n_cells: int) -> list[int]:
    """Encoder sizes by number of source cells, as the original ItClust chooses them."""
    for threshold, dims in ((20000, [128, 32]), (10000, [64, 32]), (5000, [32, 16]), (2000, [128]), (500, [64])):
        if n_cells > threshold:
            return dims
    return [16]


class Encoder(nn.Module):
    """Dense layers: ReLU on hidden layers, tanh on the bottleneck."""

    def __init__(self, n_genes: int, dims: list[int]):
        super().__init__()
        sizes = [n_genes, *dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def layer_forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        h = self.layers[i](x)
        return torch.tanh(h) if i == len(self.layers) - 1 else torch.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.layers)):
            x = self.layer_forward(x, i)
        return x


def soft_assign(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student-t kernel: q_ij proportional to (1 + |z_i - mu_j|^2 / alpha)^-(alpha+1)/2."""
    d2 = torch.cdist(z, centroids).pow(2)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target: p_ij = q_ij^2 / f_j, renormalised per cell (f_j = sum_i q_ij)."""
    w = q.pow(2) / q.sum(dim=0)
    return w / w.sum(dim=1, keepdim=True)


def cell_probabilities(q):
    """Each cell's probability of each cluster (torch tensor or numpy array, cells x clusters): ``q`` to the
    power ``PROBABILITY_POWER``, renormalised per cell."""
    w = q**PROBABILITY_POWER
    return w / w.sum(1)[:, None]


def kl_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over cells of KL(p || q)."""
    eps = 1e-10
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(dim=1).mean()
