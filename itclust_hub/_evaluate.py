"""Measuring a reference: label scores (accuracy, macro-F1, ARI) of a transfer against known labels, and
held-out evaluation (train on all groups but one - donors, say - and annotate the one left out)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, f1_score

from ._errors import ItClustError

SCORED_COLUMNS = ("label", "nearest_label", "source_label")
METRICS = ("accuracy", "macro_f1", "ari")


def accuracy(truth, predicted) -> float:
    """Share of cells whose predicted label equals the true one."""
    return float(np.mean(np.asarray(truth) == np.asarray(predicted)))


def macro_f1(truth, predicted, min_cells: int = 1) -> float:
    """Unweighted mean of the per-type F1 over the types with at least ``min_cells`` cells in ``truth``
    (NaN when there is none); every cell still counts towards those types' precision."""
    types, counts = np.unique(np.asarray(truth), return_counts=True)
    if not (counts >= min_cells).any():
        return float("nan")
    return float(f1_score(truth, predicted, labels=types[counts >= min_cells], average="macro", zero_division=0))


def ari(truth, predicted) -> float:
    """Adjusted Rand index between the true and the predicted partition."""
    return float(adjusted_rand_score(truth, predicted))


def label_scores(truth, predicted) -> dict[str, float]:
    """Accuracy, macro-F1 (over the true types) and adjusted Rand index of ``predicted`` against ``truth``,
    compared as strings.

    A predicted name that is not a true type ("Unassigned", say) counts as wrong.
    """
    truth, predicted = np.asarray(truth, dtype=str), np.asarray(predicted, dtype=str)
    return {"accuracy": accuracy(truth, predicted), "macro_f1": macro_f1(truth, predicted), "ari": ari(truth, predicted)}


def evaluate_transfer(model, query, truth, *, level: str = "fine", reference_harmonise: dict | None = None,
                      **transfer_options) -> dict:
    """Annotate ``query`` with ``model`` at ``level`` (``"fine"`` or ``"coarse"``) and score the result
    against ``truth`` (the query's labels per cell, already in the reference's vocabulary at that level).

    ``reference_harmonise`` renames the reference's labels before scoring, for a query labelled at a
    coarser resolution still (``{"CD4 T": "T cell", "CD8 T": "T cell"}``). Only cells of types the reference
    knows are scored; the others are counted in ``unknown_types``, and the share of them called
    "Unassigned" in ``unknown_flagged``. Returns the scores of the final labels (``label``: "Unassigned"
    counts as wrong), of the nearest reference type (``nearest_label``) and of the source network's direct
    prediction (``source_label``); per scored type its cells and how many got it as ``nearest_label``
    (``per_type``); the share of cells called Unassigned, the gene overlap and the number of fine-tuning
    iterations.
    """
    result = model.transfer(query, level=level, **transfer_options)
    rename = reference_harmonise or {}
    truth = pd.Series(np.asarray(truth, dtype=str), index=query.obs_names)
    known = truth.isin({rename.get(t, t) for t in result.probabilities.columns}).to_numpy()
    predicted = result.obs[list(SCORED_COLUMNS)].astype(str).replace(rename)
    obs, scored = predicted[known], truth[known]
    correct = (obs["nearest_label"] == scored).groupby(scored).agg(["size", "sum"])
    flagged = (result.labels[~known] == "Unassigned").groupby(truth[~known]).mean()
    return {
        "n_cells": int(query.n_obs),
        "n_scored": int(known.sum()),
        "level": level,
        "unknown_types": {str(k): int(v) for k, v in truth[~known].value_counts().items()},
        "unknown_flagged": {str(k): float(v) for k, v in flagged.items()},
        **{column: label_scores(scored, obs[column]) for column in SCORED_COLUMNS},
        "per_type": {str(k): {"cells": int(row["size"]), "correct": int(row["sum"])} for k, row in correct.iterrows()},
        "unassigned": float((result.labels == "Unassigned").mean()),
        "gene_overlap": float(result.provenance["genes"]["fraction"]),
        "n_iter": int(result.provenance["n_iter"]),
    }


def held_out(adata, truth, groups, train: Callable, log: Callable[[str], None] = lambda message: None,
             **transfer_options) -> dict:
    """Leave-one-group-out: for each group, ``train`` a reference on the other groups and score it there.

    ``truth`` and ``groups`` are per-cell labels and group names (donors, say) in ``adata``'s order;
    ``train`` takes an AnnData and returns an :class:`ItClust`; ``log`` receives one line per fold.
    Returns ``folds`` (per group, what :func:`evaluate_transfer` returns plus ``group``), ``mean`` (the
    unweighted mean over folds of every score) and ``per_type`` (cells and correct ``nearest_label``
    calls per type, summed over folds).
    """
    truth, groups = np.asarray(truth, dtype=str), np.asarray(groups, dtype=str)
    names = sorted(set(groups))
    if len(names) < 2:
        raise ItClustError(f"held-out evaluation needs at least 2 groups, got {names}")
    folds = []
    for name in names:
        inside = groups == name
        log(f"held-out {name}: training on {int((~inside).sum())} cells, annotating {int(inside.sum())}")
        model = train(adata[~inside].copy())
        folds.append({"group": name, **evaluate_transfer(model, adata[inside].copy(), truth[inside], **transfer_options)})
    mean = {column: {metric: float(np.mean([fold[column][metric] for fold in folds])) for metric in METRICS}
            for column in SCORED_COLUMNS}
    per_type: dict[str, dict[str, int]] = {}
    for fold in folds:
        for cell_type, counts in fold["per_type"].items():
            pooled = per_type.setdefault(cell_type, {"cells": 0, "correct": 0})
            pooled["cells"] += counts["cells"]
            pooled["correct"] += counts["correct"]
    return {"folds": folds, "mean": mean, "per_type": dict(sorted(per_type.items()))}
