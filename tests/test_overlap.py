"""The accuracy measured against gene overlap on real panels (itclust_hub/data/overlap_accuracy.json, from
benchmarks/overlap.py) and the overlap warning that quotes it."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import itclust_hub as ih
from itclust_hub._query import prepare_query

from _data import read

ROOT = Path(__file__).resolve().parents[1]
CURVE = ROOT / "itclust_hub" / "data" / "overlap_accuracy.json"
RESULTS = ROOT / "benchmarks" / "results" / "overlap.csv"


def _prepare(model, query):
    """``query`` prepared for ``model`` as its transfer prepares it; the overlap warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_query(query, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                                 recipe=model.recipe, **model._panel_inputs())
    return prepared, [str(w.message) for w in caught if "of the reference's" in str(w.message)]


def test_a_panels_overlap_warning_quotes_the_accuracy_measured_at_the_nearest_overlap():
    model = ih.ItClust.from_pretrained("pbmc-human")
    n_ref, query = len(model.genes), read("pbmc3k_labeled")[:300]
    measured = [g for g in model.genes if g in query.var_names]
    network = measured[:100]  # under the 5% minimum on network genes: read through its context genes
    context = [g for g in model.context_genes if g in query.var_names][:100]
    prepared, said = _prepare(model, query[:, network + context].copy())
    n_context = int(prepared.context_present.sum())
    overlap = (prepared.alignment.n_overlap + n_context) / n_ref
    assert len(said) == 1, said
    print(said[0])
    assert f"only {len(network)} of the reference's {n_ref} genes" in said[0]
    assert f"and {n_context} of its context genes" in said[0] and "\n" not in said[0]
    curve = json.loads(CURVE.read_text())
    for name, study in curve["studies"].items():
        nearest = min(study["points"], key=lambda point: abs(math.log(overlap / point["overlap"])))
        low, high = (f"{value:.2f}" for value in nearest["accuracy"])
        quoted = low if low == high else f"{low}-{high}"
        assert f"{quoted} ({name}: {study['query']}, {nearest['panel']}-gene panel, {nearest['overlap']:.1%})" in said[0]
    # over the minimum on network genes alone: warned under the measured curve's warn_below, not from it up
    least = int(np.ceil(curve["warn_below"] * n_ref))
    assert 0.05 * n_ref < least - 1 < 0.5 * n_ref
    for n_genes, warned in ((least - 1, True), (least, False)):
        _, said = _prepare(model, query[:, measured[:n_genes]].copy())
        assert bool(said) == warned, (n_genes, said)
    _, said = _prepare(model, query)  # the whole query
    assert not said


def test_the_shipped_overlap_curve_is_sorted_bounded_and_the_benchmarks():
    curve = json.loads(CURVE.read_text())
    assert 0 < curve["warn_below"] <= 1 and len(curve["studies"]) >= 2
    measured = pd.read_csv(RESULTS, dtype={"panel": str})
    ours = measured[(measured["method"] == "itclust-hub") & measured["accuracy"].notna()]
    for name, study in curve["studies"].items():
        overlaps = [point["overlap"] for point in study["points"]]
        assert overlaps == sorted(overlaps) and len(set(overlaps)) == len(overlaps)
        assert all(0 < share <= 1 for share in overlaps)
        for point in study["points"]:
            for low, high in (point["accuracy"], point["macro_f1"]):
                assert 0 <= low <= high <= 1
            runs = ours[(ours["study"] == name) & (ours["panel"] == point["panel"])]
            assert len(runs) >= 1
            np.testing.assert_allclose(point["accuracy"], [runs["accuracy"].min(), runs["accuracy"].max()], atol=5e-4)
            assert point["overlap"] == pytest.approx(runs["overlap"].mean(), abs=5e-5)
        assert {"all"} < {point["panel"] for point in study["points"]}  # the whole query and panels
