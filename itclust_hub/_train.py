"""Source-side training: a stacked denoising autoencoder, then a Student-t clustering layer at the
class centroids trained with KL loss against smoothed one-hot labels (ItClust's source network).

Random gene masking during supervised training teaches the network to tolerate queries that measure
only part of the reference genes.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from torch import nn

from ._data import ScaledMatrix
from ._errors import ItClustError
from ._genes import ensembl_ids_for
from ._network import Encoder, hidden_dims_for, kl_loss, soft_assign
from ._preprocess import Recipe, as_csr, check_values, detect_input_type, gene_mean_std, lognormalize, qc_filter
from ._progress import progress_bar
from ._query import check_anndata


def _seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _pretrain(encoder: Encoder, data: ScaledMatrix, epochs: int, batch_size: int, lr: float,
              rng: np.random.Generator, bar) -> None:
    """Layer-wise then end-to-end denoising autoencoder pretraining (dropout 0.2, MSE, SGD momentum)."""
    decoders = nn.ModuleList(nn.Linear(layer.out_features, layer.in_features) for layer in encoder.layers)
    noise = nn.Dropout(0.2)

    def run(params, reconstruct):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        for _ in range(epochs):
            for _, x in data.batches(batch_size, rng):
                target, recon = reconstruct(x)
                loss = nn.functional.mse_loss(recon, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.update(1)

    for i, (layer, decoder) in enumerate(zip(encoder.layers, decoders)):
        def layer_step(x, i=i, decoder=decoder):
            with torch.no_grad():
                for j in range(i):
                    x = encoder.layer_forward(x, j)
            return x, decoder(encoder.layer_forward(noise(x), i))
        run([*layer.parameters(), *decoder.parameters()], layer_step)

    def full_step(x):
        h = encoder(noise(x))
        for j in reversed(range(len(decoders))):
            h = decoders[j](h)
            if j > 0:
                h = torch.relu(h)
        return x, h
    run([*encoder.parameters(), *decoders.parameters()], full_step)


def _mask_genes(x: torch.Tensor, rate: float, rescale: bool) -> torch.Tensor:
    """Zero a random share ``rate`` of the genes (the same for every cell of ``x``), as a query that
    does not measure them; ``rescale`` multiplies the rest by genes / present genes, as at transfer."""
    keep = torch.rand(x.shape[1]) >= rate
    if not keep.any():
        return torch.zeros_like(x)
    return x * keep * (x.shape[1] / keep.sum() if rescale else 1.0)


def _supervised(encoder: Encoder, centroids: nn.Parameter, data: ScaledMatrix, codes: np.ndarray,
                n_types: int, cfg: dict, rng: np.random.Generator, bar) -> int:
    """KL training against smoothed one-hot labels; early stopping on a shuffled validation split.

    Returns the number of epochs run; the best weights (lowest validation loss) are restored.
    """
    order = rng.permutation(data.n_cells)
    n_val = max(int(round(cfg["val_fraction"] * data.n_cells)), 1)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    smooth = cfg["label_smoothing"]
    targets = torch.full((data.n_cells, n_types), smooth / n_types)
    targets[torch.arange(data.n_cells), torch.as_tensor(codes)] += 1.0 - smooth
    x_val, p_val = data.rows(val), targets[val]
    val_inputs = [x_val] + [_mask_genes(x_val, rate, cfg["rescale"]) for rate in (0.5, 0.9) if cfg["mask_prob"] > 0]
    params = [*encoder.parameters(), centroids]
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    best = (float("inf"), None, 0)
    epoch = 0
    for epoch in range(1, cfg["epochs"] + 1):
        for index in np.array_split(rng.permutation(train), max(len(train) // cfg["batch_size"], 1)):
            index = np.sort(index)
            x = data.rows(index)
            if rng.random() < cfg["mask_prob"]:
                x = _mask_genes(x, rng.random() * cfg["mask_max_rate"], cfg["rescale"])
            loss = kl_loss(targets[index], soft_assign(encoder(x), centroids))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(np.mean([kl_loss(p_val, soft_assign(encoder(x), centroids)) for x in val_inputs]))
        bar.update(1)
        if val_loss < best[0] - 1e-5:
            best = (val_loss, copy.deepcopy([p.detach().clone() for p in params]), epoch)
        elif epoch - best[2] >= cfg["patience"]:
            break
    with torch.no_grad():
        for p, saved in zip(params, best[1]):
            p.copy_(saved)
    return epoch


def _embed(encoder: Encoder, data: ScaledMatrix, batch_size: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encoder(x) for _, x in data.batches(batch_size)])


def _type_profiles(data: ScaledMatrix, codes: np.ndarray, n_types: int) -> torch.Tensor:
    """Mean scaled expression of each type (types x genes), for novelty checks and marker genes."""
    sums = torch.zeros(n_types, data.n_genes)
    for rows, x in data.batches(4096):
        sums.index_add_(0, torch.as_tensor(codes[rows]), x)
    return sums / torch.as_tensor(np.bincount(codes, minlength=n_types), dtype=torch.float32)[:, None]


def _labels_for_training(adata, label_key: str, min_cells_per_type: int, small_types: str) -> pd.Series:
    if label_key not in adata.obs.columns:
        raise ItClustError(f"label key {label_key!r} is not an obs column (have {list(adata.obs.columns)})")
    labels = adata.obs[label_key]
    if labels.isna().any():
        raise ItClustError(f"{int(labels.isna().sum())} cells have no {label_key!r}; drop them or label them")
    labels = labels.astype(str)
    counts = labels.value_counts()
    small = counts[counts < min_cells_per_type]
    if len(small) and small_types == "error":
        listed = ", ".join(f"{k} ({v})" for k, v in small.items())
        raise ItClustError(
            f"cell types with fewer than {min_cells_per_type} cells: {listed}; "
            "pass small_types='drop' to drop them or lower min_cells_per_type"
        )
    labels = labels[~labels.isin(small.index)]
    if labels.nunique() < 2:
        raise ItClustError(f"{label_key!r} has fewer than 2 cell types; a reference needs at least 2")
    return labels


def train_reference(
    adata,
    label_key: str,
    name: str,
    *,
    organism: str = "human",
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
):
    """Train an ItClust source network on a labelled AnnData and return it as an :class:`ItClust`.

    Parameters
    ----------
    adata
        Labelled reference cells; raw counts preferred (``input_type`` says what ``X`` holds).
        Not modified.
    label_key
        ``obs`` column with the cell-type labels.
    name
        Reference name (e.g. ``"pancreas-human"``).
    organism, tissue
        Recorded in the reference; ``organism`` drives cross-species mapping at transfer time.
    recipe
        Preprocessing (QC, normalisation, number of highly variable genes, clipping).
    hidden_dims
        Encoder sizes; default by number of cells as the original ItClust.
    min_cells_per_type, small_types
        Types with fewer cells are refused (``"error"``) or dropped (``"drop"``).
    pretrain_epochs, epochs, patience, batch_size, lr, pretrain_lr
        Autoencoder pretraining epochs per stage; supervised epochs, early-stopping patience on the
        validation split, minibatch size and learning rates.
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
    """
    from ._model import ItClust

    check_anndata(adata)
    if adata.var_names.duplicated().any():
        dup = adata.var_names[adata.var_names.duplicated()][0]
        raise ItClustError(f"duplicated gene names in the reference (e.g. {dup!r}); call adata.var_names_make_unique()")
    recipe = recipe or Recipe()
    labels = _labels_for_training(adata, label_key, min_cells_per_type, small_types)
    X = as_csr(adata.X)
    check_values(X)
    detected = detect_input_type(X)
    input_type = detected if input_type == "auto" else input_type
    rng = _seed_everything(seed)

    filtered = qc_filter(adata[labels.index], recipe)
    if filtered.n_obs < 10:
        raise ItClustError(f"only {filtered.n_obs} cells pass QC (>= {recipe.min_genes_per_cell} genes); check the data")
    logged = sc.AnnData(lognormalize(as_csr(filtered.X), input_type, recipe.target_sum), var=filtered.var[[]])
    n_top = min(recipe.n_top_genes, logged.n_vars)
    sc.pp.highly_variable_genes(logged, n_top_genes=n_top, flavor="seurat")
    genes = logged.var_names[logged.var["highly_variable"].to_numpy()]
    X_ref = as_csr(logged[:, genes].X)
    mean, std = gene_mean_std(X_ref)
    data = ScaledMatrix(X_ref, mean, std, recipe.max_value)

    type_names = sorted(filtered.obs[label_key].astype(str).unique())
    codes = pd.Categorical(filtered.obs[label_key].astype(str), categories=type_names).codes.astype(np.int64)
    dims = hidden_dims or hidden_dims_for(filtered.n_obs)
    encoder = Encoder(len(genes), dims)
    cfg = dict(epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, val_fraction=val_fraction,
               label_smoothing=label_smoothing, mask_max_rate=mask_max_rate, mask_prob=mask_prob,
               rescale=recipe.rescale_missing)
    with progress_bar(total=pretrain_epochs * (len(dims) + 1) + epochs, enabled=progress, desc=f"training {name}") as bar:
        _pretrain(encoder, data, pretrain_epochs, batch_size, pretrain_lr, rng, bar)
        z = _embed(encoder, data)
        centroids = nn.Parameter(torch.stack([z[codes == k].mean(0) for k in range(len(type_names))]))
        epochs_run = _supervised(encoder, centroids, data, codes, len(type_names), cfg, rng, bar)

    gene_ids = None
    if "gene_ids" in filtered.var.columns:
        gene_ids = filtered.var.loc[genes, "gene_ids"].astype(str).tolist()
    elif organism == "human":
        gene_ids = ensembl_ids_for(list(genes))
    training = dict(cfg, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr, epochs_run=epochs_run,
                    seed=seed, label_key=label_key, input_type=input_type, min_cells_per_type=min_cells_per_type)
    return ItClust.from_parts(
        name=name,
        organism=organism,
        tissue=tissue,
        recipe=recipe,
        hidden_dims=dims,
        encoder=encoder,
        centroids=centroids.detach(),
        type_profiles=_type_profiles(data, codes, len(type_names)),
        genes=list(genes),
        gene_ids=gene_ids,
        cell_types=type_names,
        type_counts=np.bincount(codes, minlength=len(type_names)).tolist(),
        training=training,
        metadata=metadata or {},
    )
