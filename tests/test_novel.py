"""Populations the reference does not know, on real data from other studies and platforms (issue 23): they get
a query cluster of their own that the naming step flags, while a query of known types from another platform
gets none (benchmarks/RESULTS.md, "Novel types")."""

from __future__ import annotations

import numpy as np
import pandas as pd

import itclust_hub as ih

from _data import read

NOVEL_IN_PBMC3K = ("DC", "Platelet")  # no sorted population of the blood atlas


def singlets(cells):
    """CellBench's cells that demuxlet calls singlets (the rest are doublets)."""
    return cells[cells.obs["demuxlet_cls"] == "SNG"].copy() if "demuxlet_cls" in cells.obs else cells


def test_a_population_the_reference_lacks_gets_its_own_flagged_cluster():
    """The bundled blood reference (sorted populations) on PBMC 3k, another 10x study: its dendritic cells and
    platelets (46 cells) are labelled Unassigned through query clusters of their own; at most 5% of the known
    cells are."""
    query = read("pbmc3k_labeled")
    result = ih.ItClust.from_pretrained("pbmc-human").transfer(query, progress=False)
    novel = query.obs["cell_type"].isin(NOVEL_IN_PBMC3K).to_numpy()
    flagged = (result.labels == "Unassigned").to_numpy()
    assert novel.sum() >= 40
    assert flagged[novel].mean() >= 0.8, pd.crosstab(query.obs["cell_type"], result.labels)
    assert flagged[~novel].mean() <= 0.05
    table = result.query_clusters
    for cluster in table.index[table["novel"]]:  # each flagged query cluster is mostly novel cells
        assert novel[result.obs["query_cluster"].to_numpy() == cluster].mean() >= 0.8, table
    # the novelty score ranks them: every novel query cluster scores above every known one
    assert result.obs["novelty"][novel & flagged].min() > result.obs["novelty"][~flagged].max()


def test_a_query_of_known_types_from_another_platform_gets_no_novel_cluster():
    """CellBench's three cell lines: a reference trained on the 10x subset (894 genes) reads the same lines
    measured by Drop-seq. Every query cluster matches its line; no cell is flagged (the rule the query's own
    structure replaced flagged a whole line here: benchmarks/RESULTS.md, "10x -> dropseq")."""
    reference, query = (singlets(read(name)) for name in ("cellbench_10x_3cl_894genes", "cellbench_dropseq_3cl"))
    model = ih.train_reference(reference, "cell_type", "cellbench-10x", progress=False)
    result = model.transfer(query, progress=False)
    assert not result.query_clusters["novel"].any(), result.query_clusters
    assert (result.labels == "Unassigned").sum() == 0
    assert (result.labels.to_numpy() == query.obs["cell_type"].astype(str).to_numpy()).mean() >= 0.99
    assert np.isin(result.query_clusters["nearest_type"], ["H1975", "H2228", "HCC827"]).all()


def test_a_left_out_cell_line_is_flagged_and_the_known_lines_are_not():
    """CellBench's five lines by CEL-seq2: a reference of plates 1-2 without A549 reads plate 3. A549 is
    flagged through its own query cluster and at most 5% of the known cells are. (With seed 1 and one thread,
    ItClust's own confidence rule, now off within a species by default, flagged 22% of the known cells here:
    benchmarks/RESULTS.md, "Novel types".)"""
    five = singlets(read("cellbench_celseq2_5cl"))
    plate = (five.obs["batch"] == "sc_celseq2_5cl_p3").to_numpy()
    reference = five[~plate & (five.obs["cell_type"] != "A549").to_numpy()].copy()
    query = five[plate].copy()
    result = ih.train_reference(reference, "cell_type", "cellbench-4", seed=1, progress=False).transfer(
        query, seed=1, progress=False)
    novel = (query.obs["cell_type"] == "A549").to_numpy()
    flagged = (result.labels == "Unassigned").to_numpy()
    assert novel.sum() >= 50 and flagged[novel].mean() >= 0.8
    assert flagged[~novel].mean() <= 0.05
    assert (result.labels.to_numpy()[~novel] == query.obs["cell_type"].astype(str).to_numpy()[~novel]).mean() >= 0.95
