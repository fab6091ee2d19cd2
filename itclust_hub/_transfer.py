"""Target-side fine-tuning (ItClust's target network): start from the source encoder, label the
target with the source network, re-centre the clusters on the target's own embedding (weighted by the
source network's certainty), then DEC self-training until fewer than ``tol`` of the labels change between
iterations (after at least ``MIN_ITER`` iterations). Its settings travel as one :class:`FineTuning`, whose
defaults a reference carries in its config. The clusters are named afterwards (``_naming.name_clusters``).

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
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ._data import ScaledMatrix, torch_csr
from ._errors import ItClustError
from ._network import Encoder, kl_loss, soft_assign, target_distribution
from ._progress import progress_bar

CERTAINTY_POWER = 4  # weight of a cell in its type's starting centroid: source probability ** this
# Self-training runs at least this many iterations before the stopping rule (labels changed < tol) applies:
# re-centring often changes under tol of the labels at the first iteration of a query from another study, which
# stopped ItClust's self-training before it began (benchmarks/RESULTS.md, "Fine-tuning schedule").
MIN_ITER = 5
PASS_ROWS = 4096  # cells per chunk of an ordered pass; fixed so that results do not depend on memory settings
SPARSE_MAX_DENSITY = 0.5  # the first layer runs on the sparse input below this share of nonzeros (measured: sparse wins up to 0.5)


@dataclass(frozen=True)
class FineTuning:
    """Settings of the target-side self-training. A reference carries the ones it was validated with
    (``config["fine_tuning"]``, these defaults when absent); ``transfer(fine_tuning=...)`` overrides some.

    Self-training stops when fewer than ``tol`` of the labels change between iterations (checked from the
    ``MIN_ITER``-th iteration on), or after ``max_iter`` iterations of ``epochs_per_iter`` epochs of
    minibatches of ``batch_size`` cells, SGD at learning rate ``lr`` (momentum 0.9). Each iteration trains
    on at most ``max_cells_per_iter`` cells drawn at random for it (``None``: every cell); the target
    distribution, the label changes and the result always use every cell.
    """

    tol: float = 0.003
    max_iter: int = 30
    epochs_per_iter: int = 1
    batch_size: int = 256
    lr: float = 0.01
    max_cells_per_iter: int | None = 50_000

    def __post_init__(self):
        numbers = {"tol": (float, int), "lr": (float, int)}
        for field in fields(self):
            value = getattr(self, field.name)
            allowed = numbers.get(field.name, (int,))
            if (isinstance(value, bool) or not isinstance(value, allowed)) and not (
                    value is None and field.name == "max_cells_per_iter"):
                kind = "a number" if field.name in numbers else "an integer"
                raise ItClustError(f"fine_tuning {field.name} must be {kind}, not {value!r}")
        for name in ("max_iter", "epochs_per_iter", "batch_size"):
            if getattr(self, name) < 1:
                raise ItClustError(f"fine_tuning {name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ItClustError(f"fine_tuning lr must be positive, not {self.lr}")
        if self.max_cells_per_iter is not None and self.max_cells_per_iter < self.batch_size:
            raise ItClustError(f"fine_tuning max_cells_per_iter must be at least batch_size ({self.batch_size}), "
                               f"not {self.max_cells_per_iter}")

    def updated(self, changes) -> "FineTuning":
        """These settings with ``changes`` (a :class:`FineTuning`, a dict of some of its fields, or None)."""
        if changes is None or isinstance(changes, FineTuning):
            return changes or self
        if not isinstance(changes, dict):
            raise ItClustError(f"fine_tuning must be a FineTuning or a dict of its fields, not {type(changes).__name__}")
        unknown = sorted(set(changes) - {field.name for field in fields(self)})
        if unknown:
            raise ItClustError(f"fine_tuning has no setting {', '.join(map(repr, unknown))}; "
                               f"it has {', '.join(field.name for field in fields(self))}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The settings as stored in a reference's config."""
        return asdict(self)


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


class _Pass(NamedTuple):
    """What one ordered pass over the cells gives."""

    embedding: torch.Tensor  # cells x latent
    q: torch.Tensor  # cells x clusters soft assignment
    delta_sums: np.ndarray  # clusters x genes: sums of the scaled expression's offsets from a zero entry (delta)
    sizes: np.ndarray  # cells per cluster (a cell belongs to the cluster of its highest soft assignment)


def _pass(encoder: Encoder, centroids: torch.Tensor, data: ScaledMatrix, *, sparse: bool, device,
          profiles: bool = True, workers: int = 1) -> _Pass:
    """One ordered pass: embedding, soft assignment and, with ``profiles``, the per-cluster sums and sizes
    (zeros without). Chunks are processed on ``workers`` threads; the result does not depend on their number."""
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
    return _Pass(z_all, q_all, *totals)


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
    settings: FineTuning,
    *,
    seed: int,
    progress: bool | None,
    device: str | torch.device = "cpu",
    sparse: bool | None = None,
    workers: int | None = None,
) -> FineTuneOutcome:
    """Run ItClust's target-side self-training on ``data`` with ``settings``; the given encoder is not modified.

    ``sparse`` forces the sparse or dense first layer in the passes (None: sparse when the input's density
    is below ``SPARSE_MAX_DENSITY``); ``device`` is any torch device ("cpu", "cuda", "cuda:1").

    On the CPU, the passes split their chunks over ``workers`` threads (default: ``torch.get_num_threads()``)
    and every torch operation runs single-threaded meanwhile (restored afterwards): the operations are
    small, and on a shared machine torch's per-operation thread barriers made them up to 10x slower than
    one thread (see ``benchmarks/RESULTS.md``). Results do not depend on ``workers``.
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    workers = (torch.get_num_threads() if workers is None else workers) if on_cpu else 1
    with intra_op_threads(1 if on_cpu else None):
        return _fine_tune(encoder, source_centroids, data, settings, seed=seed, progress=progress, device=device,
                          sparse=data.density < SPARSE_MAX_DENSITY if sparse is None else sparse, workers=workers)


def _fine_tune(encoder, source_centroids, data: ScaledMatrix, settings: FineTuning, *, seed, progress, device, sparse,
               workers) -> FineTuneOutcome:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = data.n_cells
    per_iter = n if settings.max_cells_per_iter is None else min(n, settings.max_cells_per_iter)
    encoder = copy.deepcopy(encoder).to(device)
    passing = dict(sparse=sparse, device=device, workers=workers)
    z, q_source, *_ = _pass(encoder, source_centroids.to(device), data, profiles=False, **passing)
    source_codes = q_source.argmax(1).numpy()
    kept = np.unique(source_codes)
    centroids = nn.Parameter(_starting_centroids(z, q_source)[torch.as_tensor(kept)].to(device))
    opt = _MomentumSGD([*encoder.parameters(), centroids], lr=settings.lr, momentum=0.9)
    q = soft_assign(z, centroids.detach().cpu())
    last = q.argmax(1).numpy()
    start_codes = kept[last]
    changed, converged, it = [], False, 0
    with progress_bar(total=settings.max_iter, enabled=progress, desc="fine-tuning") as bar:
        for it in range(1, settings.max_iter + 1):
            p = target_distribution(q)
            del z, q  # not needed until the next pass makes new ones: keep one copy of the per-cell arrays
            subset = None if per_iter >= n else np.sort(rng.permutation(n)[:per_iter])
            view = data if subset is None else data.take(subset)
            for _ in range(settings.epochs_per_iter):
                for local, x in view.batches(settings.batch_size, rng):
                    rows = local if subset is None else subset[local]
                    loss = kl_loss(p[torch.as_tensor(rows)].to(device), soft_assign(encoder(x.to(device)), centroids))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            del view, p
            z, q, sums, sizes = _pass(encoder, centroids.detach(), data, **passing)
            labels = q.argmax(1).numpy()
            changed.append(float(np.mean(labels != last)))
            last = labels
            bar.update(1)
            bar.set_postfix(changed=f"{changed[-1]:.4f}")
            if changed[-1] < settings.tol and it >= MIN_ITER:
                converged = True
                break
    clusters = q.argmax(1).numpy()
    # the mean of the offsets plus the zero entry is the mean of the scaled expression
    profiles = np.divide(sums + sizes[:, None] * data.zero.numpy().astype(np.float64), sizes[:, None],
                         out=np.zeros_like(sums), where=sizes[:, None] > 0)
    with torch.no_grad():
        blank = encoder(data.zero[None].to(device))[0].cpu().numpy()
    return FineTuneOutcome(source_codes, start_codes, clusters, q.numpy(), z.numpy(), profiles.astype(np.float32),
                           it, converged, changed, blank)
