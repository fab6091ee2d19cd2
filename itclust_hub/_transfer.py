"""Target-side fine-tuning (ItClust's target network): start from the source encoder, label the
target with the source network, re-centre the clusters on the target's own embedding, then DEC
self-training until fewer than ``tol`` of the labels change between iterations."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._data import ScaledMatrix
from ._network import Encoder, kl_loss, soft_assign, target_distribution
from ._progress import progress_bar


@dataclass
class FineTuneOutcome:
    """Everything the fine-tuning produced, as arrays over target cells."""

    source_codes: np.ndarray  # source network's direct prediction (reference type index)
    kept_types: np.ndarray  # reference type index of each target cluster
    initial_clusters: np.ndarray  # cluster of each cell before self-training (target centroids)
    clusters: np.ndarray  # final cluster of each cell
    q: np.ndarray  # cells x clusters soft assignment
    embedding: np.ndarray  # cells x latent
    cluster_profiles: np.ndarray  # clusters x genes mean scaled expression
    n_iter: int
    converged: bool
    changed: list[float]  # share of labels changed at each iteration


def _pass(encoder: Encoder, centroids: torch.Tensor, data: ScaledMatrix, batch_size: int):
    """One ordered pass: embedding, soft assignment and per-cluster sums of scaled expression."""
    zs, qs = [], []
    sums = torch.zeros(len(centroids), data.n_genes)
    with torch.no_grad():
        for _, x in data.batches(batch_size):
            z = encoder(x)
            q = soft_assign(z, centroids)
            zs.append(z)
            qs.append(q)
            sums.index_add_(0, q.argmax(1), x)
    return torch.cat(zs), torch.cat(qs), sums


def fine_tune(
    encoder: Encoder,
    source_centroids: torch.Tensor,
    data: ScaledMatrix,
    *,
    tol: float,
    max_iter: int,
    epochs_per_iter: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool | None,
) -> FineTuneOutcome:
    """Run ItClust's target-side self-training on ``data``; the given encoder is not modified."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = copy.deepcopy(encoder)
    z, q_source, _ = _pass(encoder, source_centroids, data, batch_size)
    source_codes = q_source.argmax(1).numpy()
    kept = np.unique(source_codes)
    centroids = nn.Parameter(torch.stack([z[torch.as_tensor(source_codes == k)].mean(0) for k in kept]))
    opt = torch.optim.SGD([*encoder.parameters(), centroids], lr=lr, momentum=0.9)
    q = soft_assign(z, centroids.detach())
    sums = torch.zeros(len(kept), data.n_genes)
    initial = last = q.argmax(1).numpy()
    changed, converged, it = [], False, 0
    with progress_bar(total=max_iter, enabled=progress, desc="fine-tuning") as bar:
        for it in range(1, max_iter + 1):
            p = target_distribution(q)
            for _ in range(epochs_per_iter):
                for rows, x in data.batches(batch_size, rng):
                    loss = kl_loss(p[torch.as_tensor(rows)], soft_assign(encoder(x), centroids))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            z, q, sums = _pass(encoder, centroids.detach(), data, batch_size)
            labels = q.argmax(1).numpy()
            changed.append(float(np.mean(labels != last)))
            last = labels
            bar.update(1)
            bar.set_postfix(changed=f"{changed[-1]:.4f}")
            if changed[-1] < tol:
                converged = True
                break
    clusters = q.argmax(1).numpy()
    sizes = np.bincount(clusters, minlength=len(kept))
    profiles = (sums / torch.as_tensor(np.maximum(sizes, 1), dtype=torch.float32)[:, None]).numpy()
    return FineTuneOutcome(source_codes, kept, initial, clusters, q.numpy(), z.numpy(), profiles,
                           it, converged, changed)
