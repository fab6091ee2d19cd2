"""Scores of predicted cell-type labels against the truth, and calibration of a confidence score.

Labels are compared as strings; the caller harmonises both vocabularies first. A prediction that is not
among the true types (e.g. "Unassigned") simply counts as wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, f1_score

CONFIDENCE_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


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


def per_type_recall(truth, predicted) -> pd.Series:
    """Share of each true type's cells that received that type, indexed by type."""
    frame = pd.DataFrame({"truth": np.asarray(truth), "hit": np.asarray(truth) == np.asarray(predicted)})
    return frame.groupby("truth")["hit"].mean().rename("recall")


def scores(truth, predicted) -> dict[str, float]:
    """Accuracy, macro-F1 and ARI in one dictionary."""
    return {"accuracy": accuracy(truth, predicted), "macro_f1": macro_f1(truth, predicted),
            "ari": ari(truth, predicted)}


def calibration(correct, confidence, bins=CONFIDENCE_BINS) -> pd.DataFrame:
    """Accuracy within confidence bins.

    ``correct`` is a boolean per cell, ``confidence`` a score in [0, 1]. One row per bin ``(low, high]``
    (the first bin also holds 0): number of cells, mean confidence and accuracy; empty bins are kept.
    """
    correct, confidence = np.asarray(correct, dtype=float), np.asarray(confidence, dtype=float)
    binned = pd.cut(confidence, bins=np.asarray(bins), include_lowest=True)
    frame = pd.DataFrame({"bin": binned, "correct": correct, "confidence": confidence})
    table = frame.groupby("bin", observed=False).agg(
        n=("correct", "size"), mean_confidence=("confidence", "mean"), accuracy=("correct", "mean"))
    return table.reset_index().assign(bin=lambda t: t["bin"].astype(str))


def expected_calibration_error(correct, confidence, bins=CONFIDENCE_BINS) -> float:
    """Cell-weighted mean of |accuracy - mean confidence| over the confidence bins."""
    table = calibration(correct, confidence, bins).query("n > 0")
    gap = (table["accuracy"] - table["mean_confidence"]).abs()
    return float((gap * table["n"]).sum() / table["n"].sum())
