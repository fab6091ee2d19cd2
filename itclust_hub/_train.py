"""Source-side training: a stacked denoising autoencoder, then a Student-t clustering layer at the
class centroids trained with KL loss against smoothed one-hot labels (ItClust's source network).

Random gene masking during supervised training teaches the network to tolerate queries that measure
only part of the reference genes. Training runs in one process, or data-parallel across processes
(``distributed=True``: started by ``itclust-hub train --processes N`` or by ``torchrun``, see
:mod:`itclust_hub._distributed`); a backed AnnData is read chunk by chunk either way.

An atlas of fewer than ``LARGE_ATLAS`` cells trains in epochs over every cell, minibatches of random rows.
A larger one trains on samples drawn from all of its cells, so its cost stops growing with its size: each
pretraining stage sees as many cells as one of a ``SAMPLE_CELLS``-cell atlas would (the pretraining loss has
levelled off by then, benchmarks/RESULTS.md), each supervised epoch as many as one of a ``LARGE_ATLAS``-cell
atlas would, and the supervised stage at most as many as ``epochs`` epochs of a ``SAMPLE_CELLS``-cell atlas;
early stopping watches a fixed-size validation sample held in memory, and
minibatches come from chunks of ``CHUNK_CELLS`` consecutive cells (chunk order shuffled, rows shuffled within
a chunk), so a backed atlas is read sequentially and memory is bounded by a chunk. (A backed atlas under
``LARGE_ATLAS`` cells is held in memory on its selected genes, as an in-memory one is: that is small.)
"""

from __future__ import annotations

import copy
import itertools
import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._atlas import CHUNK_CELLS, Shard, scan_atlas
from ._distributed import DistributedReplica, Replica
from ._errors import ItClustError, ItClustWarning
from ._genes import choose_organism, ensembl_ids_for, normalize_organism
from ._data import ScaledMatrix
from ._impute import context_loadings, fill_missing, gene_loadings, latent_map
from ._network import Encoder, hidden_dims_for, kl_loss, soft_assign
from ._ontology import check_ontology
from ._preprocess import Recipe
from ._progress import progress_bar
from ._query import check_anndata

VAL_MASK_RATES = (0.5, 0.9)
VAL_CHUNK = 4096
CONTEXT_CHUNK = 1024  # cells per step of the context pass: dense rows over every gene the atlas measures
LARGE_ATLAS = 50_000  # from this many cells, training counts cells seen instead of epochs over every cell
SAMPLE_CELLS = 10_000  # a large atlas trains on samples: pretrain_epochs (a stage) or at most epochs x this many cells
_LISTED = 10  # small cell types an error message names


class _SourceNetwork(nn.Module):
    """The encoder, the decoders of its denoising-autoencoder pretraining and the cluster centroids, in one
    module so that one DistributedDataParallel wrapper serves every training stage."""

    def __init__(self, encoder: Encoder, n_types: int):
        super().__init__()
        self.encoder = encoder
        self.decoders = nn.ModuleList(nn.Linear(layer.out_features, layer.in_features) for layer in encoder.layers)
        self.centroids = nn.Parameter(torch.zeros(n_types, encoder.layers[-1].out_features))
        self.noise = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor, stage):
        """Stage ``i`` (an int): layer ``i``'s input and its reconstruction from a noisy copy; stage
        ``"autoencoder"``: ``x`` and its reconstruction through all layers; ``"classify"``: soft assignments."""
        if stage == "classify":
            return soft_assign(self.encoder(x), self.centroids)
        if stage == "autoencoder":
            h = self.encoder(self.noise(x))
            for j in reversed(range(len(self.decoders))):
                h = self.decoders[j](h)
                if j > 0:
                    h = torch.relu(h)
            return x, h
        with torch.no_grad():
            for j in range(stage):
                x = self.encoder.layer_forward(x, j)
        return x, self.decoders[stage](self.encoder.layer_forward(self.noise(x), stage))


def _seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _minibatches(order: np.ndarray, batch_size: int, world: int, even: bool = False):
    """Sorted minibatches of ``batch_size`` rows from ``order`` (the last one shorter), or with ``even`` of
    about ``batch_size`` rows each; minibatches too small to give every process a row are skipped."""
    if even:
        batches = np.array_split(order, max(len(order) // batch_size, 1))
    else:
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for index in batches:
        if len(index) >= world:
            yield np.sort(index)


def _rows(data, index: np.ndarray, replica: Replica) -> torch.Tensor:
    return data.rows(index).to(replica.device)


def _epoch(data, order: np.ndarray, batch_size: int, replica: Replica, even: bool = False):
    """One epoch in the order ``order`` (cell positions): ``(rows, positions, n)`` per minibatch, with this
    process's scaled rows, their cell positions and the minibatch's size over all processes."""
    for index in _minibatches(order, batch_size, replica.world, even):
        mine = replica.take(index)
        yield _rows(data, mine, replica), mine, len(index)


def _chunked(data, cells: np.ndarray, batch_size: int, rng: np.random.Generator, replica: Replica):
    """Endless epochs over ``cells`` (ascending positions) as :func:`_epoch` yields them, read in chunks of
    ``CHUNK_CELLS`` consecutive cells: chunk order shuffled, each chunk read once per epoch into memory and
    its rows shuffled there."""
    edges = np.searchsorted(cells, np.arange(0, data.n_cells + CHUNK_CELLS, CHUNK_CELLS))
    while True:
        for k in rng.permutation(len(edges) - 1):
            mine = cells[edges[k] : edges[k + 1]]
            if len(mine):
                chunk = data.take(mine)
                for rows, index, n in _epoch(chunk, rng.permutation(len(mine)), batch_size, replica, even=True):
                    yield rows, mine[index], n


def _cells(batches, n_cells: int):
    """The minibatches of ``batches`` until ``n_cells`` cells have been seen."""
    seen = 0
    for rows, index, n in batches:
        yield rows, index, n
        seen += n
        if seen >= n_cells:
            return


def _validation_size(n_cells: int, val_fraction: float) -> int:
    """Cells held out for early stopping: a share of the atlas, or of ``LARGE_ATLAS`` cells for a larger one."""
    return max(int(round(val_fraction * min(n_cells, LARGE_ATLAS))), 1)


def _pretrain(net: _SourceNetwork, model: nn.Module, data, epochs: int, batch_size: int, lr: float,
              rng: np.random.Generator, bar, replica: Replica) -> None:
    """Layer-wise then end-to-end denoising autoencoder pretraining (dropout 0.2, MSE, SGD momentum), each
    stage ``epochs`` epochs over every cell, or over ``SAMPLE_CELLS`` cells' worth of chunked minibatches."""
    large = data.n_cells >= LARGE_ATLAS
    stream = _chunked(data, np.arange(data.n_cells), batch_size, rng, replica) if large else None

    def batches():
        if large:
            return _cells(stream, epochs * SAMPLE_CELLS)
        return itertools.chain.from_iterable(
            _epoch(data, rng.permutation(data.n_cells), batch_size, replica) for _ in range(epochs))

    def run(stage, params):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        for x, _, n in batches():
            target, recon = model(x, stage)
            loss = nn.functional.mse_loss(recon, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(n)

    for i, (layer, decoder) in enumerate(zip(net.encoder.layers, net.decoders)):
        run(i, [*layer.parameters(), *decoder.parameters()])
    run("autoencoder", [*net.encoder.parameters(), *net.decoders.parameters()])


def _covariance_chunks(n_cells: int) -> list[tuple[int, int]]:
    """The chunks ``(start, stop)`` of the cells the imputation model's gene covariances are summed over:
    every cell of an atlas under ``LARGE_ATLAS`` cells; else evenly spaced chunks of ``LARGE_ATLAS`` cells in
    all (enough for the covariances of a few thousand genes, and their cost stops growing with the atlas)."""
    chunks = list(Shard().mine(n_cells, CHUNK_CELLS))
    if n_cells < LARGE_ATLAS:
        return chunks
    picked = np.unique(np.linspace(0, len(chunks) - 1, -(-LARGE_ATLAS // CHUNK_CELLS)).round().astype(int))
    return [chunks[i] for i in picked]


def _cell_statistics(net: _SourceNetwork, data, codes: np.ndarray, n_types: int, replica: Replica):
    """One pass over the cells. Per type: the mean embedding (the initial centroids) and the mean scaled
    expression (the type profiles kept for novelty checks and marker genes); over the cells of
    :func:`_covariance_chunks`: the genes' summed products ``X'X`` (for the imputation model of missing genes)."""
    z_sums = torch.zeros(n_types, net.centroids.shape[1], dtype=torch.float64, device=replica.device)
    x_sums = torch.zeros(n_types, data.n_genes, dtype=torch.float64, device=replica.device)
    products = torch.zeros(data.n_genes, data.n_genes, dtype=torch.float64, device=replica.device)
    covariance = set(_covariance_chunks(data.n_cells))
    with torch.no_grad():
        for start, stop in replica.shard().mine(data.n_cells, CHUNK_CELLS):
            x = _rows(data, np.arange(start, stop), replica)
            types = torch.as_tensor(codes[start:stop], device=replica.device)
            z_sums.index_add_(0, types, net.encoder(x).double())
            x = x.double()
            x_sums.index_add_(0, types, x)
            if (start, stop) in covariance:
                products += x.T @ x
    counts = torch.as_tensor(np.bincount(codes, minlength=n_types), dtype=torch.float64, device=replica.device)
    centroids = (replica.all_sum(z_sums) / counts[:, None]).float()
    profiles = (replica.all_sum(x_sums) / counts[:, None]).float()
    return centroids, profiles, replica.all_sum(products).cpu().numpy()


def _context_statistics(atlas, loadings: np.ndarray, noise: float, replica: Replica):
    """One pass over the cells of :func:`_covariance_chunks`: the loadings of every other gene the atlas
    measures (``context``) on the latent positions of the reference genes' probabilistic PCA, and their
    residual noise (:func:`itclust_hub._impute.context_loadings`). Each block of cells is read once for both
    gene sets."""
    W = torch.from_numpy(loadings).double().to(replica.device)
    to_latent = latent_map(W, noise)
    n, k, g = len(W), W.shape[1], len(atlas.context_columns)
    columns = np.concatenate([atlas.gene_columns, atlas.context_columns])
    mean, std = np.concatenate([atlas.mean, atlas.context_mean]), np.concatenate([atlas.std, atlas.context_std])
    sums = [torch.zeros(shape, dtype=torch.float64, device=replica.device) for shape in ((k, k), (k, g), (g,))]
    chunks = _covariance_chunks(atlas.n_cells)
    with torch.no_grad():
        for chunk_start, chunk_stop in chunks[replica.rank :: replica.world]:
            for start in range(chunk_start, chunk_stop, CONTEXT_CHUNK):
                rows = np.arange(start, min(start + CONTEXT_CHUNK, chunk_stop))
                both = ScaledMatrix(atlas.read(rows, columns), mean, std, atlas.recipe.max_value,
                                    dense_budget=0).rows(slice(None)).to(replica.device).double()
                z, x = both[:, :n] @ to_latent, both[:, n:]
                for total, part in zip(sums, (z.T @ z, z.T @ x, (x * x).sum(0))):
                    total += part
    n_cells = sum(stop - start for start, stop in chunks)
    return context_loadings(*(replica.all_sum(total).cpu().numpy() for total in sums), n_cells)


def _gene_ids(var: pd.DataFrame, symbols: list[str], organism: str) -> list[str] | None:
    """Ensembl IDs of genes: the atlas's ``gene_ids`` column, else the bundled table for human, else None."""
    if "gene_ids" in var.columns:
        return var["gene_ids"].astype(str).tolist()
    return ensembl_ids_for(symbols) if organism == "human" else None


def _gene_mask(n_genes: int, rate: float) -> torch.Tensor:
    """Genes kept when a random share ``rate`` is dropped (the same genes for every cell of a batch)."""
    return torch.rand(n_genes) >= rate


def _masked(x: torch.Tensor, keep: torch.Tensor | None, imputation) -> torch.Tensor:
    """The genes outside ``keep`` as a query that does not measure them gets them at transfer: filled in
    from the others with the reference's ``imputation`` model (loadings, noise)."""
    return x if keep is None else fill_missing(x, keep, *imputation)


def _targets(codes: np.ndarray, n_types: int, smoothing: float, device) -> torch.Tensor:
    """One-hot labels smoothed by ``smoothing``."""
    targets = torch.full((len(codes), n_types), smoothing / n_types, device=device)
    targets[torch.arange(len(codes)), torch.as_tensor(codes, device=device)] += 1.0 - smoothing
    return targets


def _validation_loss(net: _SourceNetwork, data, val: np.ndarray, codes: np.ndarray, masks: list, cfg: dict,
                     imputation, replica: Replica) -> float:
    """KL loss on the validation cells, averaged over the clean copy and the masked copies."""
    sums = torch.zeros(len(masks), dtype=torch.float64, device=replica.device)
    with torch.no_grad():
        for start in range(0, len(val), VAL_CHUNK):
            mine = replica.take(val[start : start + VAL_CHUNK])
            if not len(mine):
                continue
            x = _rows(data, mine, replica)
            target = _targets(codes[mine], len(net.centroids), cfg["label_smoothing"], replica.device)
            for i, keep in enumerate(masks):
                q = soft_assign(net.encoder(_masked(x, keep, imputation)), net.centroids)
                sums[i] += kl_loss(target, q).double() * len(mine)
    return float(replica.all_sum(sums).mean()) / len(val)


def _supervised(net: _SourceNetwork, model: nn.Module, data, codes: np.ndarray, cfg: dict, imputation,
                rng: np.random.Generator, bar, replica: Replica) -> int:
    """KL training against smoothed one-hot labels; early stopping on a shuffled validation split (on a
    large atlas: a validation sample of ``val_fraction * LARGE_ATLAS`` cells held in memory, and epochs of
    ``(1 - val_fraction) * LARGE_ATLAS`` cells of chunked minibatches from the other cells).

    Returns the number of epochs run; the best weights (lowest validation loss) are restored.
    """
    large = data.n_cells >= LARGE_ATLAS
    order = rng.permutation(data.n_cells)
    n_val = _validation_size(data.n_cells, cfg["val_fraction"])
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if large:
        stream = _chunked(data, train, cfg["batch_size"], rng, replica)
        val_data, val_codes, val = data.take(val), codes[val], np.arange(n_val)
    else:
        val_data, val_codes = data, codes
    masks = [None] + [_gene_mask(data.n_genes, rate) for rate in VAL_MASK_RATES if cfg["mask_prob"] > 0]
    params = [*net.encoder.parameters(), net.centroids]
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    best = (float("inf"), None, 0)
    epoch = 0
    for epoch in range(1, cfg["epochs"] + 1):
        batches = (_cells(stream, LARGE_ATLAS - n_val) if large
                   else _epoch(data, rng.permutation(train), cfg["batch_size"], replica, even=True))
        for x, mine, n in batches:
            keep = _gene_mask(data.n_genes, rng.random() * cfg["mask_max_rate"]) if rng.random() < cfg["mask_prob"] else None
            target = _targets(codes[mine], len(net.centroids), cfg["label_smoothing"], replica.device)
            loss = kl_loss(target, model(_masked(x, keep, imputation), "classify"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(n)
        val_loss = _validation_loss(net, val_data, val, val_codes, masks, cfg, imputation, replica)
        bar.set_postfix(epoch=epoch, val_loss=f"{val_loss:.4f}", refresh=False)
        if val_loss < best[0] - 1e-5:
            best = (val_loss, copy.deepcopy([p.detach().clone() for p in params]), epoch)
        elif epoch - best[2] >= cfg["patience"]:
            break
    with torch.no_grad():
        for p, saved in zip(params, best[1]):
            p.copy_(saved)
    return epoch


def _label_codes(adata, label_key: str, min_cells_per_type: int, small_types: str):
    """Each cell's index into the sorted cell types kept for training (-1: its type is too small), the
    types, and the dropped types with their cell counts."""
    if label_key not in adata.obs.columns:
        raise ItClustError(f"label key {label_key!r} is not an obs column (have {list(adata.obs.columns)})")
    labels = adata.obs[label_key]
    if labels.isna().any():
        raise ItClustError(f"{int(labels.isna().sum())} cells have no {label_key!r}; drop them or label them")
    if small_types not in ("error", "drop"):
        raise ItClustError(f"small_types must be 'error' or 'drop', not {small_types!r}")
    labels = labels.astype(str)
    counts = labels.value_counts()
    if len(counts) > 1 and counts.max() == 1:
        raise ItClustError(f"label_key {label_key!r} has a different value for every one of its {len(counts):,} cells; "
                           "give the obs column that holds cell types")
    small = counts[counts < min_cells_per_type]
    if len(small) and small_types == "error":
        listed = ", ".join(f"{k} ({v})" for k, v in small.head(_LISTED).items()) + (
            f" and {len(small) - _LISTED:,} more" if len(small) > _LISTED else "")
        raise ItClustError(
            f"cell types with fewer than {min_cells_per_type} cells: {listed}; "
            "pass small_types='drop' to drop them or lower min_cells_per_type"
        )
    types = sorted(set(counts.index) - set(small.index))
    if len(types) < 2:
        raise ItClustError(f"{label_key!r} has fewer than 2 cell types; a reference needs at least 2")
    codes = pd.Categorical(labels, categories=types).codes.astype(np.int64)
    return codes, types, {str(k): int(v) for k, v in small.items()}


def _replica(distributed: bool) -> Replica:
    return DistributedReplica() if distributed else Replica()


def train_reference(
    adata,
    label_key: str,
    name: str,
    *,
    organism: str | None = None,
    tissue: str = "unknown",
    recipe: Recipe | None = None,
    input_type: str = "auto",
    hidden_dims: list[int] | None = None,
    min_cells_per_type: int = 2,
    small_types: str = "error",
    pretrain_epochs: int = 40,
    epochs: int = 300,
    patience: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    pretrain_lr: float = 0.05,
    val_fraction: float = 0.25,
    label_smoothing: float = 0.1,
    mask_max_rate: float = 0.9,
    mask_prob: float = 0.9,
    seed: int = 0,
    progress: bool | None = None,
    metadata: dict | None = None,
    ontology: dict | None = None,
    distributed: bool = False,
):
    """Train an ItClust source network on a labelled AnnData and return it as an :class:`ItClust`.

    Parameters
    ----------
    adata
        Labelled reference cells; raw counts preferred (``input_type`` says what ``X`` holds). Not
        modified. A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is read chunk by chunk from
        disk, so it need not fit in memory: peak memory is bounded by a chunk and a validation sample, not
        by the atlas.
    label_key
        ``obs`` column with the cell-type labels.
    name
        Reference name (e.g. ``"pancreas-human"``).
    organism, tissue
        Recorded in the reference; ``organism`` drives cross-species mapping at transfer time. Any usual
        spelling (``"human"``, ``"Mus musculus"``, ``"mm"``, ``10090``); names whose genes cannot be mapped are
        refused. Default: the organism the gene names are written as (mouse ``Gcg``, human ``GCG``; Ensembl
        ``ENSMUSG`` / ``ENSG``), human when they cannot tell (with a warning when they look otherwise).
    recipe
        Preprocessing (QC, normalisation, number of highly variable genes, clipping): an
        :class:`itclust_hub.Recipe`, e.g. ``ih.Recipe(n_top_genes=3000)``; default ``ih.Recipe()``.
    input_type
        ``"auto"`` (detect), ``"counts"`` (refused when the values are not integers), ``"lognorm"`` or
        ``"tpm"``.
    hidden_dims
        Encoder sizes; default by number of cells as the original ItClust.
    min_cells_per_type, small_types
        Types with fewer cells are refused (``"error"``) or dropped (``"drop"``); dropped types are
        recorded in ``config.training["dropped_types"]``.
    pretrain_epochs, epochs, patience, batch_size, lr, pretrain_lr
        Autoencoder pretraining epochs per stage; supervised epochs, early-stopping patience on the
        validation split, minibatch size and learning rates. From ``LARGE_ATLAS`` (50,000) cells an epoch
        is ``SAMPLE_CELLS`` (10,000; pretraining) or ``LARGE_ATLAS`` cells' worth of minibatches read in
        chunks, not a pass over every cell, and supervised training stops after at most ``epochs`` x
        ``SAMPLE_CELLS`` cells (recorded in
        ``config.training["large_atlas"]``), so training time stops growing with the atlas.
    val_fraction, label_smoothing
        Shuffled validation share for early stopping; smoothing of the one-hot targets.
    mask_max_rate, mask_prob
        Gene masking: with probability ``mask_prob`` a batch loses a random share (up to
        ``mask_max_rate``) of its genes, so queries measuring fewer genes keep accuracy; the
        validation loss for early stopping averages the clean split and two masked copies.
    seed
        Makes training deterministic.
    progress
        Show a progress bar (default: only on a terminal).
    metadata
        Extra JSON fields for ``config.json`` (description, citation, license, ...).
    ontology
        Optional Cell Ontology terms of each cell type at two resolutions, stored in ``labels.json``:
        ``{label: {"id": "CL:0000895", "coarse": "CD4 T", "coarse_id": "CL:0000624"}}`` (ids may be
        ``None``). Every kept type needs an entry; entries of other labels (dropped, absent) are ignored. With it,
        ``transfer(level="coarse")`` reports the coarse labels.
    distributed
        Train data-parallel with the other processes started by ``itclust-hub train --processes N`` or
        ``torchrun`` (DistributedDataParallel, gloo on CPU, nccl on GPU): every process passes the same
        atlas and reads its own share of each minibatch; ``batch_size`` is the global batch. Every process
        returns the same reference.
    """
    from ._model import ItClust

    check_anndata(adata)
    choice = choose_organism(None if organism is None else normalize_organism(organism), "human", adata.var,
                             adata.var_names)
    organism = choice.organism
    note = choice.message("organism", f"recorded as a {organism} reference", "the default")
    if note:
        warnings.warn(note, ItClustWarning, stacklevel=2)
    if adata.var_names.duplicated().any():
        dup = adata.var_names[adata.var_names.duplicated()][0]
        raise ItClustError(f"duplicated gene names in the reference (e.g. {dup!r}); call adata.var_names_make_unique()")
    recipe = recipe or Recipe()
    codes, types, dropped = _label_codes(adata, label_key, min_cells_per_type, small_types)
    if ontology is not None:
        ontology = check_ontology({t: v for t, v in ontology.items() if t in types}, types, "ontology")
    replica = _replica(distributed)
    rng = _seed_everything(seed)
    atlas = scan_atlas(adata, codes, types, recipe, input_type, replica.shard())
    large = atlas.n_cells >= LARGE_ATLAS  # trained on samples: cells counted, not epochs over every cell
    # a backed atlas under LARGE_ATLAS cells fits in memory once its genes are selected; a larger one streams
    data = atlas.streamed() if adata.isbacked and large else atlas.in_memory()
    n_types = len(atlas.cell_types)
    dims = hidden_dims or hidden_dims_for(atlas.n_cells)
    net = _SourceNetwork(Encoder(len(atlas.genes), dims), n_types).to(replica.device)
    model = replica.wrap(net)
    cfg = dict(epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
               label_smoothing=label_smoothing, mask_max_rate=mask_max_rate, mask_prob=mask_prob)
    show = progress if replica.rank == 0 else False
    seen = min(atlas.n_cells, LARGE_ATLAS)  # cells an epoch sees
    pretrain_seen = SAMPLE_CELLS if large else seen
    with progress_bar(total=pretrain_epochs * (len(dims) + 1) * pretrain_seen, enabled=show, desc=f"pretraining {name}",
                      unit="cells", unit_scale=True) as bar:
        _pretrain(net, model, data, pretrain_epochs, batch_size, pretrain_lr, rng, bar, replica)
    centroids, profiles, products = _cell_statistics(net, data, atlas.codes, n_types, replica)
    covered = sum(stop - start for start, stop in _covariance_chunks(atlas.n_cells))
    loadings, noise = gene_loadings(products, covered)
    context = _context_statistics(atlas, loadings, noise, replica)
    with torch.no_grad():
        net.centroids.copy_(centroids)
    imputation = (torch.from_numpy(loadings).to(replica.device), noise)
    n_train = seen - _validation_size(atlas.n_cells, val_fraction)
    if large:  # the supervised stage counts cells too
        cfg["epochs"] = min(epochs, -(-epochs * SAMPLE_CELLS // n_train))
    with progress_bar(total=cfg["epochs"] * n_train, enabled=show, desc=f"training {name} (at most; stops early)",
                      unit="cells", unit_scale=True) as bar:
        epochs_run = _supervised(net, model, data, atlas.codes, cfg, imputation, rng, bar, replica)
    net.cpu()

    context_genes = list(adata.var_names[atlas.context_columns])
    training = dict(cfg, epochs=epochs, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr, epochs_run=epochs_run,
                    seed=seed, label_key=label_key, input_type=atlas.input_type, min_cells_per_type=min_cells_per_type,
                    dropped_types=dropped, cells_failing_qc=int((codes >= 0).sum()) - atlas.n_cells,
                    processes=replica.world, device=replica.device.type,
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    if large:  # smaller atlases record what they always did
        training["large_atlas"] = dict(pretrain_cells_per_stage=pretrain_epochs * SAMPLE_CELLS, cells_per_epoch=n_train,
                                       validation_cells=seen - n_train, max_epochs=cfg["epochs"],
                                       chunk_cells=CHUNK_CELLS,
                                       covariance_cells=covered)
    return ItClust.from_parts(
        name=name,
        organism=organism,
        tissue=tissue,
        recipe=recipe,
        hidden_dims=dims,
        encoder=net.encoder,
        centroids=net.centroids.detach(),
        type_profiles=profiles.cpu(),
        gene_mean=atlas.mean,
        gene_std=atlas.std,
        gene_loadings=loadings,
        gene_noise=noise,
        gene_share=atlas.share,
        genes=atlas.genes,
        gene_ids=_gene_ids(adata.var.iloc[atlas.gene_columns], atlas.genes, organism),
        context={"symbols": context_genes,
                 "ensembl_ids": _gene_ids(adata.var.iloc[atlas.context_columns], context_genes, organism),
                 "mean": atlas.context_mean, "std": atlas.context_std, "loadings": context[0], "noise": context[1],
                 "share": atlas.context_share},
        cell_types=atlas.cell_types,
        type_counts=np.bincount(atlas.codes, minlength=n_types).tolist(),
        training=training,
        metadata=metadata or {},
        ontology=None if ontology is None else {t: ontology[t] for t in atlas.cell_types},  # types kept after QC
    )
