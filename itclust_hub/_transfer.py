"""Target-side fine-tuning (ItClust's target network): start from the source encoder, label the
target with the source network, re-centre the clusters on the target's own embedding (weighted by the
source network's certainty), then DEC self-training until fewer than ``tol`` of the labels change between
iterations (after at least ``MIN_ITER`` iterations). The clusters are named afterwards
(``_naming.name_clusters``).

Cost and memory: every iteration makes one ordered pass over all cells (embedding, soft assignment ``q``,
label changes), in chunks of ``PASS_ROWS`` cells, with the first layer applied to the sparse input
(``ScaledMatrix.delta``: exact, clipping included) when the input is sparse enough for that to pay. The
self-training epochs of an iteration run on all cells, or, for a query larger than
``max_cells_per_iter``, on that many cells drawn at random for the iteration (as DEC's
``update_interval``: a bounded number of minibatch steps between updates of the target distribution);
the target distribution and the stopping rule always use every cell. Nothing is held per cell but the
embedding, ``q`` and the labels.
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ._data import ScaledMatrix, torch_csr
from ._network import Encoder, kl_loss, soft_assign, target_distribution
from ._progress import progress_bar

CERTAINTY_POWER = 4  # weight of a cell in its type's starting centroid: source probability ** this
# Self-training runs at least this many iterations before the stopping rule (labels changed < tol) applies:
# re-centring often changes under tol of the labels at the first iteration of a query from another study, which
# stopped ItClust's self-training before it began (benchmarks/RESULTS.md, "Fine-tuning schedule").
MIN_ITER = 5
PASS_ROWS = 4096  # cells per chunk of an ordered pass; fixed so that results do not depend on memory settings
SPARSE_MAX_DENSITY = 0.5  # the first layer runs on the sparse input below this share of nonzeros (measured: sparse wins up to 0.5)


@dataclass
class FineTuneOutcome:
    """Everything the fine-tuning produced, as arrays over target cells."""

    source_codes: np.ndarray  # source network's direct prediction (reference type index)
    start_codes: np.ndarray  # reference type each cell starts self-training with (its cluster after re-centring)
    clusters: np.ndarray  # final cluster of each cell
    q: np.ndarray  # cells x clusters soft assignment
    embedding: np.ndarray  # cells x latent
    cluster_profiles: np.ndarray  # clusters x genes: mean scaled expression of each cluster's cells
    n_iter: int
    converged: bool
    changed: list[float]  # share of labels changed at each iteration
    blank_embedding: np.ndarray | None = None  # latent: where the fine-tuned encoder puts a cell with no expression


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (at most the current number), then restore them."""
    before = torch.get_num_threads()
    if n is None or n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _MomentumSGD:
    """``torch.optim.SGD(params, lr, momentum)`` (no dampening, nesterov or weight decay), the same arithmetic
    as its single-tensor path (labels and probabilities identical: benchmarks/RESULTS.md, "Restructure"),
    without importing ``torch._dynamo``, which costs every transfer 2.3-2.8 s per process."""

    def __init__(self, params, lr: float, momentum: float):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.buffers[i] is None:
                self.buffers[i] = torch.clone(p.grad).detach()
            else:
                self.buffers[i].mul_(self.momentum).add_(p.grad)
            p.add_(self.buffers[i], alpha=-self.lr)


def _encode(encoder: Encoder, data: ScaledMatrix, block: sp.csr_matrix, delta: sp.csr_matrix, sparse: bool,
            device) -> torch.Tensor:
    """Embedding of the rows ``block`` (log-normalised CSR; ``delta`` its scaled sparse part)."""
    first = encoder.layers[0]
    if sparse:
        xs = torch_csr(delta, device)
        weight = first.weight  # computed by an imputing first layer: read it once
        h = torch.sparse.mm(xs, weight.t()) + (weight @ data.zero.to(device) + first.bias)
        h = torch.tanh(h) if len(encoder.layers) == 1 else torch.relu(h)
        for i in range(1, len(encoder.layers)):
            h = encoder.layer_forward(h, i)
        return h
    return encoder(data._scale(torch.from_numpy(block.toarray())).to(device))


def _ordered_map(fn, items, workers: int):
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``2 * workers`` items in flight
    (so a pass over a matrix on disk never reads more than a few chunks ahead)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pass(encoder: Encoder, centroids: torch.Tensor, data: ScaledMatrix, *, sparse: bool, device,
          profiles: bool = True, workers: int = 1):
    """One ordered pass: embedding, soft assignment and, with ``profiles``, the per-cluster sums of the scaled
    expression's offsets from a zero entry (``delta``) and the cluster sizes, as ``(sums, sizes)``; a cell
    belongs to the cluster of its highest soft assignment. Chunks are processed
    on ``workers`` threads; the result does not depend on their number."""
    k = len(centroids)

    @torch.no_grad()  # grad mode is per thread: set it in the worker
    def chunk(bounds):
        start, stop = bounds
        block = data.block(start, stop)
        delta = data.delta(block)
        z = _encode(encoder, data, block, delta, sparse, device)
        q = soft_assign(z, centroids)
        z, q = z.cpu(), q.cpu()
        sums = None
        if profiles:
            labels = q.argmax(1).numpy()
            indicator = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
            sums = ((indicator @ delta).toarray(), np.bincount(labels, minlength=k).astype(np.float64))
        return z, q, sums

    z_all = torch.empty(data.n_cells, encoder.layers[-1].out_features)
    q_all = torch.empty(data.n_cells, k)
    totals = (np.zeros((k, data.n_genes)), np.zeros(k))
    bounds = [(start, min(start + PASS_ROWS, data.n_cells)) for start in range(0, data.n_cells, PASS_ROWS)]
    for (start, stop), (z, q, part) in zip(bounds, _ordered_map(chunk, bounds, workers)):
        z_all[start:stop] = z
        q_all[start:stop] = q
        if part is not None:
            totals = tuple(total + more for total, more in zip(totals, part))
    return z_all, q_all, totals


def _starting_centroids(z: torch.Tensor, q_source: torch.Tensor) -> torch.Tensor:
    """Each reference type's mean target embedding over the cells the source network assigns to it, every
    cell weighted by its source probability to the power ``CERTAINTY_POWER`` (rows of types with no cells
    are NaN).

    Cells the source network is unsure of, often the ones it misreads, pull their type's centroid less. On
    Baron (benchmarks/RESULTS.md), plain mean -> squared weights (2,000 genes): human reference -> mouse
    query 0.891 -> 0.916, held-out human3 macro-F1 0.896 -> 0.948, mouse -> human 0.872 -> 0.889; squared ->
    fourth power (3,000 genes): mouse -> human 0.886 -> 0.902, human -> mouse 0.912 -> 0.927.
    """
    probability, codes = q_source.max(1)
    weight = probability**CERTAINTY_POWER
    sums = torch.zeros(q_source.shape[1], z.shape[1]).index_add_(0, codes, z * weight[:, None])
    return sums / torch.zeros(q_source.shape[1]).index_add_(0, codes, weight)[:, None]


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
    max_cells_per_iter: int | None = None,
    device: str | torch.device = "cpu",
    sparse: bool | None = None,
    workers: int | None = None,
) -> FineTuneOutcome:
    """Run ItClust's target-side self-training on ``data``; the given encoder is not modified.

    ``max_cells_per_iter`` bounds the cells each iteration trains on (None: all); ``sparse`` forces the
    sparse or dense first layer in the passes (None: sparse when the input's density is below
    ``SPARSE_MAX_DENSITY``); ``device`` is any torch device ("cpu", "cuda", "cuda:1").

    On the CPU, the passes split their chunks over ``workers`` threads (default: ``torch.get_num_threads()``)
    and every torch operation runs single-threaded meanwhile (restored afterwards): the operations are
    small, and on a shared machine torch's per-operation thread barriers made them up to 10x slower than
    one thread (see ``benchmarks/RESULTS.md``). Results do not depend on ``workers``.
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    workers = (torch.get_num_threads() if workers is None else workers) if on_cpu else 1
    with intra_op_threads(1 if on_cpu else None):
        return _fine_tune(encoder, source_centroids, data, tol=tol, max_iter=max_iter, epochs_per_iter=epochs_per_iter,
                          batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                          max_cells_per_iter=max_cells_per_iter, device=device,
                          sparse=data.density < SPARSE_MAX_DENSITY if sparse is None else sparse, workers=workers)


def _fine_tune(encoder, source_centroids, data: ScaledMatrix, *, tol, max_iter, epochs_per_iter, batch_size, lr,
               seed, progress, max_cells_per_iter, device, sparse, workers) -> FineTuneOutcome:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = data.n_cells
    per_iter = n if max_cells_per_iter is None else min(n, max(int(max_cells_per_iter), 1))
    encoder = copy.deepcopy(encoder).to(device)
    passing = dict(sparse=sparse, device=device, workers=workers)
    z, q_source, _ = _pass(encoder, source_centroids.to(device), data, profiles=False, **passing)
    source_codes = q_source.argmax(1).numpy()
    kept = np.unique(source_codes)
    centroids = nn.Parameter(_starting_centroids(z, q_source)[torch.as_tensor(kept)].to(device))
    opt = _MomentumSGD([*encoder.parameters(), centroids], lr=lr, momentum=0.9)
    q = soft_assign(z, centroids.detach().cpu())
    last = q.argmax(1).numpy()
    start_codes = kept[last]
    changed, converged, it = [], False, 0
    with progress_bar(total=max_iter, enabled=progress, desc="fine-tuning") as bar:
        for it in range(1, max_iter + 1):
            p = target_distribution(q)
            del z, q  # not needed until the next pass makes new ones: keep one copy of the per-cell arrays
            subset = None if per_iter >= n else np.sort(rng.permutation(n)[:per_iter])
            view = data if subset is None else data.take(subset)
            for _ in range(epochs_per_iter):
                for local, x in view.batches(batch_size, rng):
                    rows = local if subset is None else subset[local]
                    loss = kl_loss(p[torch.as_tensor(rows)].to(device), soft_assign(encoder(x.to(device)), centroids))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            del view, p
            z, q, cluster_sums = _pass(encoder, centroids.detach(), data, **passing)
            labels = q.argmax(1).numpy()
            changed.append(float(np.mean(labels != last)))
            last = labels
            bar.update(1)
            bar.set_postfix(changed=f"{changed[-1]:.4f}")
            if changed[-1] < tol and it >= MIN_ITER:
                converged = True
                break
    clusters = q.argmax(1).numpy()
    sums, sizes = cluster_sums
    # the mean of the offsets plus the zero entry is the mean of the scaled expression
    profiles = np.divide(sums + sizes[:, None] * data.zero.numpy().astype(np.float64), sizes[:, None],
                         out=np.zeros_like(sums), where=sizes[:, None] > 0)
    with torch.no_grad():
        blank = encoder(data.zero[None].to(device))[0].cpu().numpy()
    return FineTuneOutcome(source_codes, start_codes, clusters, q.numpy(), z.numpy(), profiles.astype(np.float32),
                           it, converged, changed, blank)
