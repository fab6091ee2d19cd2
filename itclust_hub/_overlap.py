"""The accuracy measured against gene overlap on real gene panels (``data/overlap_accuracy.json``, written by
``benchmarks/overlap.py --write-package-data``), and the sentence the overlap warning quotes from it."""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

CURVE_FILE = "overlap_accuracy.json"


@functools.lru_cache(maxsize=1)
def measured_curve() -> dict:
    """The shipped curve: per study its points (panel, overlap share, accuracy and macro-F1 range over seeds)
    sorted by overlap, and ``warn_below``, the overlap under which the measured accuracy falls off."""
    return json.loads((resources.files("itclust_hub") / "data" / CURVE_FILE).read_text())


def nearest_points(overlap: float) -> dict[str, dict]:
    """Each measured study's point nearest ``overlap`` (a share of the reference's genes; compared on a log
    scale, as overlaps of 5% and 10% differ as much as 50% and 100%)."""
    distance = lambda point: abs(math.log(max(overlap, 1e-6) / point["overlap"]))  # noqa: E731
    return {name: min(study["points"], key=distance) for name, study in measured_curve()["studies"].items()}


def low_overlap(overlap: float) -> bool:
    """Whether ``overlap`` is under the lowest measured overlap from which up accuracy held (``warn_below``)."""
    return overlap < measured_curve()["warn_below"]


def measured_accuracy(overlap: float) -> str:
    """One clause quoting, per measured study, the accuracy range of its point nearest ``overlap``."""
    studies = measured_curve()["studies"]
    quoted = []
    for name, point in nearest_points(overlap).items():
        panel = "whole query" if point["panel"] == "all" else f"{point['panel']}-gene panel"
        low, high = (f"{value:.2f}" for value in point["accuracy"])
        read = low if low == high else f"{low}-{high}"  # the range over seeds
        quoted.append(f"{read} ({name}: {studies[name]['query']}, {panel}, {point['overlap']:.1%})")
    return f"on real panels at a similar overlap, accuracy was {', '.join(quoted)} (benchmarks/RESULTS.md)"
