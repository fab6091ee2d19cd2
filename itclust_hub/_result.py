"""What a transfer returns: labels, per-cell table, probabilities, cluster table and embedding,
with ways to write them into an AnnData and to disk."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._errors import ItClustError

UNASSIGNED = "Unassigned"
TABLE_FILES = ("labels.csv", "probabilities.csv", "clusters.csv")


@dataclass
class TransferResult:
    """The annotation of one query by one reference.

    Attributes
    ----------
    obs
        One row a cell (index = the query's ``obs_names``): ``label`` (``"Unassigned"`` where the cell's
        cluster is judged novel), ``nearest_label`` (the reference type the cluster grew from),
        ``source_label`` (the source network's direct prediction, before fine-tuning), ``cluster``,
        ``probability`` (soft assignment to its cluster), ``cluster_confidence`` and ``novel``.
    probabilities
        Cells x reference types soft assignment (types that received no cells are 0).
    clusters
        One row a target cluster: ``label``, ``nearest_label``, ``size``, ``confidence`` (ItClust's share of
        cells kept since the start of fine-tuning), ``similarity`` (correlation of the cluster's mean
        expression with its reference type) and ``novel``.
    embedding
        Cells x latent dimensions of the fine-tuned encoder.
    provenance
        Reference name, version, revision, gene overlap, input type assumed, iterations and settings.
    """

    obs: pd.DataFrame
    probabilities: pd.DataFrame
    clusters: pd.DataFrame
    embedding: np.ndarray
    provenance: dict = field(default_factory=dict)

    @property
    def labels(self) -> pd.Series:
        """Cell-type name per cell, ``"Unassigned"`` in novel clusters."""
        return self.obs["label"]

    @property
    def changed_fraction(self) -> float:
        """Share of cells whose label fine-tuning changed from the source network's prediction."""
        return float((self.obs["nearest_label"] != self.obs["source_label"]).mean())

    def __repr__(self) -> str:
        counts = self.labels.value_counts()
        top = ", ".join(f"{k}: {v}" for k, v in counts.head(6).items())
        return (f"TransferResult({len(self.obs)} cells, {len(self.clusters)} clusters, "
                f"{int(self.clusters['novel'].sum())} novel; {top}{', ...' if len(counts) > 6 else ''})")

    def to_adata(self, adata, *, copy: bool = True, key: str = "itclust"):
        """Write the result into ``adata`` (a copy unless ``copy=False``) and return it.

        Adds ``obs[f"{key}_label"]`` and the other per-cell columns, ``obsm[f"X_{key}"]`` (embedding),
        ``obsm[f"{key}_probabilities"]`` and ``uns[key]`` (clusters table, cell types, provenance).
        """
        if adata.n_obs != len(self.obs) or not (adata.obs_names == self.obs.index).all():
            raise ItClustError("the AnnData's cells differ from the annotated ones; pass the AnnData you transferred")
        adata = adata.copy() if copy else adata
        for col in self.obs.columns:
            adata.obs[f"{key}_{col}"] = self.obs[col].to_numpy()
        for col in ("label", "nearest_label", "source_label"):
            adata.obs[f"{key}_{col}"] = pd.Categorical(adata.obs[f"{key}_{col}"])
        adata.obsm[f"X_{key}"] = self.embedding
        adata.obsm[f"{key}_probabilities"] = self.probabilities.to_numpy()
        adata.uns[key] = {
            "cell_types": list(self.probabilities.columns),
            "clusters": {c: self.clusters.reset_index()[c].to_numpy() for c in ["cluster", *self.clusters.columns]},
            "provenance": json.dumps(self.provenance),
        }
        return adata

    def write_tables(self, folder, *, force: bool = False) -> list[Path]:
        """Write ``labels.csv`` (per-cell table), ``probabilities.csv`` and ``clusters.csv`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = dict(zip(TABLE_FILES, (self.obs, self.probabilities, self.clusters)))
        written = []
        for name, frame in tables.items():
            path = folder / name
            if path.exists() and not force:
                raise ItClustError(f"{path} exists; pass force=True (--force) to overwrite")
            with atomic_path(path) as tmp:
                frame.to_csv(tmp)
            written.append(path)
        return written

    def plot_umap(self, *, seed: int = 0):
        """UMAP of the embedding coloured by label and by cluster confidence (a matplotlib Figure)."""
        from ._plot import plot_umap

        return plot_umap(self, seed=seed)

    def plot_confidence(self):
        """Per-cluster size, confidence and similarity, novel clusters marked (a matplotlib Figure)."""
        from ._plot import plot_confidence

        return plot_confidence(self)

    def plot_markers(self, adata, model, *, n_genes: int = 3, layer=None, use_raw: bool = False, orthologs=None):
        """Dot plot of the reference's marker genes per predicted label in ``adata`` (a matplotlib Figure);
        ``layer``, ``use_raw`` and ``orthologs`` as given to the transfer."""
        from ._plot import plot_markers

        return plot_markers(self, adata, model, n_genes=n_genes, layer=layer, use_raw=use_raw, orthologs=orthologs)

    def plot_confusion(self, truth, *, truth_key: str = "query label"):
        """Heatmap of the query's own labels ``truth`` (a Series over the cells) against the predicted ones."""
        from ._plot import plot_confusion

        return plot_confusion(self, truth, truth_key=truth_key)

    def report(self, folder, *, adata=None, model=None, truth_key: str | None = None, force: bool = False,
               **options) -> list[Path]:
        """Write PNG figures and ``summary.md`` into ``folder``; returns the paths.

        Markers need ``adata`` and ``model``, the confusion heatmap ``adata`` and ``truth_key``; ``options``
        (``layer``, ``use_raw``, ``orthologs``, ``n_genes``, ``seed``) go to
        :func:`itclust_hub._report.write_report`.
        """
        from ._report import write_report

        return write_report(self, folder, adata=adata, model=model, truth_key=truth_key, force=force, **options)


class atomic_path:
    """Context manager giving a temporary path that replaces ``path`` only if the block succeeds."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def build_result(outcome, cell_types: list[str], type_profiles: np.ndarray, present: np.ndarray, obs_names,
                 min_confidence: float, min_similarity: float, provenance: dict) -> TransferResult:
    """Name clusters through the kept types, score them and assemble the :class:`TransferResult`."""
    names = np.asarray(cell_types, dtype=object)
    kept = outcome.kept_types
    n_clusters = len(kept)
    sizes = np.bincount(outcome.clusters, minlength=n_clusters)
    kept_share = np.bincount(outcome.clusters, weights=outcome.initial_clusters == outcome.clusters,
                             minlength=n_clusters)
    confidence = np.divide(kept_share, sizes, out=np.zeros(n_clusters), where=sizes > 0)
    similarity = np.array([_correlation(outcome.cluster_profiles[k][present], type_profiles[kept[k]][present])
                           for k in range(n_clusters)])
    novel = (confidence < min_confidence) | (similarity < min_similarity)
    cluster_names = names[kept]
    clusters = pd.DataFrame({
        "label": np.where(novel, UNASSIGNED, cluster_names),
        "nearest_label": cluster_names,
        "size": sizes,
        "confidence": confidence,
        "similarity": similarity,
        "novel": novel,
    })
    clusters.index.name = "cluster"
    clusters = clusters[clusters["size"] > 0]
    c = outcome.clusters
    obs = pd.DataFrame({
        "label": clusters["label"].reindex(c).to_numpy(),
        "nearest_label": cluster_names[c],
        "source_label": names[outcome.source_codes],
        "cluster": c,
        "probability": outcome.q[np.arange(len(c)), c],
        "cluster_confidence": confidence[c],
        "novel": novel[c],
    }, index=pd.Index(obs_names, name=None))
    probabilities = np.zeros((len(c), len(names)), dtype=np.float32)
    probabilities[:, kept] = outcome.q
    return TransferResult(
        obs=obs,
        probabilities=pd.DataFrame(probabilities, index=obs.index, columns=list(names)),
        clusters=clusters,
        embedding=outcome.embedding,
        provenance=provenance,
    )


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0
