"""Report and figures: a cross-species report with a confusion heatmap, a wrong-tissue report that must
say so, marker choice, agreement, and refusals."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from itclust_hub import ItClustError, TransferResult
from itclust_hub import _plot, _report

from _data import read
from test_cli import small_model


def subset(name: str, n: int):
    adata = read(name)
    return adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, n, replace=False))].copy()


@pytest.fixture(scope="module")
def mouse():
    """400 Baron mouse cells annotated by the human reference through orthologs."""
    query = subset("baron_mouse_pancreas", 400)
    return query, small_model().transfer(query, query_organism="mouse", progress=False)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_cross_species_report_with_confusion_heatmap(mouse, tmp_path):
    query, result = mouse
    paths = result.report(tmp_path / "report", adata=query, model=small_model(), truth_key="cell_type1")
    names = ["umap.png", "cluster_confidence.png", "marker_dotplot.png", "confusion.png", "summary.md"]
    assert paths == [tmp_path / "report" / name for name in names]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(names)
    for path in paths[:-1]:
        width, height = png_size(path)
        assert width >= 600 and height >= 400, path.name

    summary = paths[-1].read_text()
    truth, labels = query.obs["cell_type1"].astype(str).str.lower(), result.labels
    known = truth.isin(result.probabilities.columns)  # mouse "T_cell" is the reference's "t_cell"
    score = _plot.agreement(result, query.obs["cell_type1"])
    assert score == pytest.approx((labels == truth)[known].mean())
    assigned = labels != "Unassigned"
    assert (labels == truth)[assigned].mean() > 0.7  # a tiny reference across species: few labels, mostly right
    assert f"{score:.1%} of the cells whose own label names a reference type" in summary
    assert "through one-to-one orthologs" in summary and "organism mouse" in summary
    assert "local folder" not in summary and "trained in this session (no revision)" in summary
    for label, n in result.labels.value_counts().items():
        assert f"| {label} | {n:,} |" in summary
    for figure in names[:-1]:
        assert f"({figure})" in summary


def test_report_refuses_to_overwrite_and_checks_its_arguments(mouse, tmp_path):
    query, result = mouse
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "cluster_confidence.png").write_bytes(b"mine")
    with pytest.raises(ItClustError, match="cluster_confidence.png exists; pass force=True"):
        result.report(folder)
    assert not (folder / "umap.png").exists()  # checked before drawing anything
    assert result.report(folder, force=True)[-1].read_text().count("No marker dot plot") == 1
    with pytest.raises(ItClustError, match="truth_key= needs adata="):
        result.report(tmp_path / "r2", truth_key="cell_type1")
    with pytest.raises(ItClustError, match="'celltype' is not an obs column.*cell_type1"):
        result.report(tmp_path / "r2", adata=query, truth_key="celltype")
    with pytest.raises(ItClustError, match="cells differ"):
        result.report(tmp_path / "r2", adata=query[:10].copy())
    assert not (tmp_path / "r2").exists()


def test_wrong_tissue_is_made_obvious(tmp_path):
    """A pancreas reference on blood: most cells Unassigned, a warning in the summary, and the reference's
    pancreatic markers absent from the query."""
    model = small_model()
    query = subset("pbmc3k_raw_unlabeled", 400)
    result = model.transfer(query, progress=False)
    assert (result.labels == "Unassigned").mean() > 0.5
    summary = _report.summary_markdown(result, [])
    assert "> **Warning:**" in summary and "judged novel" in summary

    expression, present = _plot.query_expression(result, query, model)
    assert expression.shape == (400, len(model.genes)) and present.mean() > 0.9
    islet = [model.genes.index(g) for g in ("INS", "SST") if g in model.genes]
    assert islet and (expression[:, islet] > 0).mean() < 0.05
    fig = result.plot_markers(query, model)
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    novel_groups = result.clusters.loc[result.clusters["novel"], "nearest_label"].nunique()  # one row per nearest type
    assert all(label.startswith("Unassigned (nearest: ") for label in labels[-novel_groups:])
    assert not any(label.startswith("Unassigned") for label in labels[:-novel_groups])


def test_marker_genes_are_the_islet_hormones():
    model = small_model()
    markers = _plot.marker_genes(model.type_profiles.numpy(), model.cell_types, ["beta", "delta"], n_genes=3)
    assert "INS" in [model.genes[g] for g in markers["beta"]]
    assert "SST" in [model.genes[g] for g in markers["delta"]]


def test_marker_genes_skip_unmeasured_and_repeated_genes():
    profiles = np.array([[5.0, 4.0, 0.0, 1.0], [5.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    types = ["a", "b", "c"]
    assert _plot.marker_genes(profiles, types, types, n_genes=2) == {"a": [1, 0], "b": [2], "c": [3]}
    present = np.array([True, False, True, True])
    assert _plot.marker_genes(profiles, types, ["a"], n_genes=2, present=present) == {"a": [0]}  # 3: not above


def synthetic_result(labels, nearest, novel) -> TransferResult:
    cells = [f"c{i}" for i in range(len(labels))]
    clusters_of = {t: i for i, t in enumerate(dict.fromkeys(nearest))}
    obs = pd.DataFrame({"label": labels, "nearest_label": nearest, "source_label": nearest,
                        "cluster": [clusters_of[t] for t in nearest], "probability": 0.9,
                        "cluster_confidence": [0.2 if n else 0.9 for n in novel], "novel": novel}, index=cells)
    clusters = obs.groupby("cluster").agg(label=("label", "first"), nearest_label=("nearest_label", "first"),
                                          size=("label", "size"), confidence=("cluster_confidence", "first"),
                                          novel=("novel", "first"))
    clusters["similarity"] = 0.5
    clusters["closest_type"] = clusters["nearest_label"]
    clusters["renamed"] = False
    probabilities = pd.DataFrame(0.0, index=cells, columns=["alpha", "beta", "delta"])
    return TransferResult(obs, probabilities, clusters, np.zeros((len(cells), 2)),
                          {"reference": "toy", "settings": {"min_confidence": 0.5, "min_similarity": 0.3}})


def test_agreement_and_confusion_heatmap():
    result = synthetic_result(["alpha", "alpha", "beta", "Unassigned", "beta"],
                              ["alpha", "alpha", "beta", "delta", "beta"], [False, False, False, True, False])
    truth = pd.Series(["Alpha", "beta", "beta", "delta", "B_cell"], index=result.obs.index)
    assert _plot.agreement(result, truth) == pytest.approx(2 / 4)  # B_cell is no reference type
    fig = result.plot_confusion(truth, truth_key="cell_type1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["alpha", "beta", "Unassigned"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Alpha (1)", "beta (2)", "B_cell (1)", "delta (1)"]
    assert "agreement 50.0% on the 4 cells" in fig.get_suptitle()
    assert np.isnan(_plot.agreement(result, pd.Series(["x"] * 5, index=result.obs.index)))


def test_confidence_chart_marks_novel_clusters():
    result = synthetic_result(["alpha", "Unassigned", "Unassigned"], ["alpha", "beta", "beta"], [False, True, True])
    result.clusters["renamed"] = [True, False]  # alpha's cells started as another type
    fig = result.plot_confidence()
    ticks = {t.get_text(): t.get_color() for t in fig.axes[0].get_yticklabels()}
    assert ticks == {"1 \u2192 beta  NOVEL": _plot.NOVEL_COLOR, "0 \u2192 alpha": "black"}
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["low confidence", "renamed by expression"]
