"""Peer annotation methods, run the way their authors document them, for the accuracy benchmark.

Every peer takes ``(ref_adata, ref_labels, query_adata)``: raw-count AnnData objects that already hold the
same genes in the same order (see ``splits.peer_inputs``), and the reference labels as an array. It
returns the predicted label of every query cell as an ``np.ndarray`` of ``str``. Inputs are never modified.

Two shims adapt the peers to the libraries installed here. They live in this benchmark only and are
applied only around the peer call that needs them:

- CellTypist 1.7.x builds ``LogisticRegression(multi_class="ovr")``; scikit-learn 1.8 removed
  ``multi_class``. ``OneVsRestLogisticRegression`` accepts the argument and fits one binary model per
  type, as scikit-learn < 1.8 did for ``"ovr"``, so CellTypist's per-type decision scores keep their meaning.
- scanpy 1.11.5 ``ingest`` rebuilds pynndescent's search forest with ``NNDescent.n_search_trees``, which
  pynndescent 0.7 leaves at ``None`` (the option no longer does anything there). ``_nndescent_for_ingest``
  sets it to 1, pynndescent's former default, so scanpy's call goes through unchanged.
"""

from __future__ import annotations

import importlib
from unittest import mock

import anndata as ad
import numpy as np
import pynndescent
import scanpy as sc
from pynndescent import NNDescent
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

_TARGET_SUM = 1e4


def log_normalize(adata: ad.AnnData) -> ad.AnnData:
    """Return a copy normalised to 10,000 counts per cell and log1p-transformed (CellTypist's input)."""
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=_TARGET_SUM)
    sc.pp.log1p(out)
    return out


class OneVsRestLogisticRegression(LogisticRegression):
    """``LogisticRegression`` that still takes CellTypist's ``multi_class="ovr"`` (scikit-learn >= 1.8 shim).

    ``fit`` trains one binary logistic regression per class with the same settings and stacks their
    coefficients, which is what ``multi_class="ovr"`` did; prediction is the inherited arg-max of the
    decision function.
    """

    def __init__(self, multi_class: str = "ovr", **kwargs):
        if multi_class != "ovr":
            raise ValueError(f"this shim only implements multi_class='ovr', got {multi_class!r}")
        super().__init__(**kwargs)
        self.multi_class = multi_class

    def fit(self, X, y):
        """Fit one binary model per class and keep their stacked coefficients."""
        settings = {name: getattr(self, name) for name in LogisticRegression._get_param_names()}
        binary = LogisticRegression(**{**settings, "n_jobs": None})
        ovr = OneVsRestClassifier(binary, n_jobs=self.n_jobs).fit(X, y)
        self.classes_ = ovr.classes_
        self.coef_ = np.vstack([est.coef_ for est in ovr.estimators_])
        self.intercept_ = np.concatenate([est.intercept_ for est in ovr.estimators_])
        self.n_features_in_ = X.shape[1]
        self.n_iter_ = np.concatenate([est.n_iter_ for est in ovr.estimators_])
        return self


def _celltypist_model(ref_adata: ad.AnnData, ref_labels):
    """CellTypist's model trained on the log-normalised reference (all given genes)."""
    import celltypist

    train_module = importlib.import_module("celltypist.train")  # the attribute celltypist.train is the function
    with mock.patch.object(train_module, "LogisticRegression", OneVsRestLogisticRegression):
        return celltypist.train(log_normalize(ref_adata), labels=np.asarray(ref_labels, dtype=str), n_jobs=-1)


def celltypist_predict_both(ref_adata: ad.AnnData, ref_labels,
                            query_adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """CellTypist trained on the log-normalised reference (all given genes): its per-cell predictions for the
    query and, from the same annotation, its majority-voting ones (each of CellTypist's Leiden over-clusters
    of the query relabelled by its most common prediction)."""
    import celltypist

    model = _celltypist_model(ref_adata, ref_labels)
    table = celltypist.annotate(log_normalize(query_adata), model=model, majority_voting=True).predicted_labels
    return (table["predicted_labels"].astype(str).to_numpy(),
            table["majority_voting"].astype(str).to_numpy())


def celltypist_unassigned(ref_adata: ad.AnnData, ref_labels, query_adata: ad.AnnData,
                          threshold: float = 0.5) -> np.ndarray:
    """CellTypist's probability threshold (its ``mode="prob match"``): each query cell's most probable type
    when that probability reaches ``threshold``, else ``"Unassigned"``."""
    import celltypist

    model = _celltypist_model(ref_adata, ref_labels)
    probabilities = celltypist.annotate(log_normalize(query_adata), model=model).probability_matrix
    best = probabilities.idxmax(axis=1).astype(str).to_numpy()
    return np.where(probabilities.max(axis=1).to_numpy() >= threshold, best, "Unassigned")


def _nndescent_for_ingest(*args, **kwargs) -> NNDescent:
    """Build a ``pynndescent.NNDescent`` whose ``n_search_trees`` is 1 instead of ``None`` (ingest shim)."""
    index = NNDescent(*args, **kwargs)
    if index.n_search_trees is None:
        index.n_search_trees = 1
    return index


def ingest_predict(ref_adata: ad.AnnData, ref_labels, query_adata: ad.AnnData,
                   n_top_genes: int = 2000) -> np.ndarray:
    """scanpy ingest onto a reference embedding.

    Both sides are normalised and log1p-transformed; the reference's ``n_top_genes`` highly variable genes
    are kept on both; the reference gets PCA, a neighbour graph and UMAP; ``sc.tl.ingest`` maps the query
    onto it and transfers the majority label of its nearest reference neighbours in PCA space. No scaling
    step; scanpy's default random states.
    """
    ref, query = log_normalize(ref_adata), log_normalize(query_adata)
    ref.obs["label"] = np.asarray(ref_labels, dtype=str)
    sc.pp.highly_variable_genes(ref, n_top_genes=min(n_top_genes, ref.n_vars))
    genes = ref.var_names[ref.var["highly_variable"].to_numpy()]
    ref, query = ref[:, genes].copy(), query[:, genes].copy()
    sc.pp.pca(ref)
    sc.pp.neighbors(ref)
    sc.tl.umap(ref)
    with mock.patch.object(pynndescent, "NNDescent", _nndescent_for_ingest):
        sc.tl.ingest(query, ref, obs="label")
    return query.obs["label"].astype(str).to_numpy()


def logreg_predict(ref_adata: ad.AnnData, ref_labels, query_adata: ad.AnnData) -> np.ndarray:
    """Plain multinomial logistic regression on log-normalised genes scaled to unit variance with the
    reference's statistics (a scikit-learn pipeline fitted on the reference).

    Centring is left out so the matrix stays sparse; with an unpenalised intercept it does not change the fit.
    """
    ref, query = log_normalize(ref_adata), log_normalize(query_adata)
    model = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=1000))
    model.fit(ref.X, np.asarray(ref_labels, dtype=str))
    return model.predict(query.X).astype(str)
