"""Scores of predicted cell-type labels against the truth (accuracy, macro-F1, ARI: the package's own, from
``itclust_hub._evaluate``), per-type recall, and calibration of a confidence score.

Labels are compared as strings; the caller harmonises both vocabularies first. A prediction that is not
among the true types (e.g. "Unassigned") simply counts as wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from itclust_hub._evaluate import accuracy, ari, label_scores, macro_f1  # noqa: F401 (read from here)

CONFIDENCE_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def per_type_recall(truth, predicted) -> pd.Series:
    """Share of each true type's cells that received that type, indexed by type."""
    frame = pd.DataFrame({"truth": np.asarray(truth), "hit": np.asarray(truth) == np.asarray(predicted)})
    return frame.groupby("truth")["hit"].mean().rename("recall")


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
