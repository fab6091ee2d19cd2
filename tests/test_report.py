"""Report and figures: a cross-species report with a confusion heatmap, a wrong-tissue report that must
say so, marker choice, agreement, and refusals."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgba
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


def test_markers_read_the_matrix_the_transfer_read():
    """A transfer from a layer records it; the marker plot reads the same layer without being told again."""
    model = small_model()
    query = subset("baron_human_pancreas", 300)
    layered = query.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = layered.X * 0.5  # not the counts: reading X instead of the layer would change the expression
    result = model.transfer(layered, layer="counts", progress=False)
    assert (result.provenance["layer"], result.provenance["use_raw"]) == ("counts", False)
    from_layer, present, _ = _plot.query_expression(result, layered, model)
    plain = model.transfer(query, progress=False)
    assert plain.provenance["layer"] is None
    from_x, present_x, _ = _plot.query_expression(plain, query, model)
    assert np.array_equal(present, present_x)
    np.testing.assert_array_equal(from_layer.toarray(), from_x.toarray())
    assert isinstance(result.plot_markers(layered, model), Figure)


def test_wrong_tissue_is_made_obvious(tmp_path):
    """A pancreas reference on blood: most cells Unassigned, a warning in the summary, and the reference's
    pancreatic markers absent from the query."""
    model = small_model()
    query = subset("pbmc3k_raw_unlabeled", 400)
    result = model.transfer(query, progress=False)
    assert (result.labels == "Unassigned").mean() > 0.5
    summary = _report.summary_markdown(result, [])
    assert "> **Warning:**" in summary and "judged novel" in summary

    expression, present, names = _plot.query_expression(result, query, model)
    assert expression.shape == (400, len(model.genes)) and present.mean() > 0.9
    islet = [model.genes.index(g) for g in ("INS", "SST") if g in model.genes]
    assert islet and (expression[:, islet] > 0).mean() < 0.05
    fig = result.plot_markers(query, model)
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    novel_groups = result.obs.loc[result.obs["novel"], "nearest_label"].nunique()  # one row per nearest type
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
                          {"reference": "toy", "settings": {"min_confidence": 0.5}})


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


def test_marker_dotplot_names_genes_as_the_query_does(mouse):
    """Across species the columns are the query's genes (mouse Sst for the reference's SST), and top markers
    without a one-to-one ortholog (INS: mouse Ins1 and Ins2) are named under the plot, not silently dropped."""
    query, result = mouse
    ax = result.plot_markers(query, small_model()).axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "Sst" in ticks and set(ticks) <= set(query.var_names)
    assert "mouse genes matched to human ones" in ax.get_xlabel() and "INS (beta)" in ax.get_xlabel()


def test_marker_names_undo_r_mangled_symbols():
    model = small_model()
    query = subset("pbmc3k_raw_unlabeled", 50)
    result = model.transfer(query, progress=False, fine_tuning={"max_iter": 1})
    _, present, names = _plot.query_expression(result, query, model)
    mangled = [i for i, g in enumerate(model.genes) if g.startswith("HLA.")]
    assert mangled and all(names[i] == model.genes[i].replace(".", "-") for i in mangled)  # HLA-DRA, not HLA.DRA
    assert all(names[i] in set(query.var_names) for i in np.flatnonzero(present))


def umap_result(n: int, seed: int = 0) -> TransferResult:
    """``n`` cells of three well-separated types, the last type's cluster novel (Unassigned)."""
    rng = np.random.default_rng(seed)
    nearest = np.array(["alpha", "beta", "delta"])[np.arange(n) % 3]
    result = synthetic_result(np.where(nearest == "delta", "Unassigned", nearest).tolist(), nearest.tolist(),
                              (nearest == "delta").tolist())
    result.embedding = rng.normal(size=(n, 8)) + 20 * (np.arange(n) % 3)[:, None]
    return result


def test_umap_draws_unassigned_grey_beneath_and_labels_inside(tmp_path):
    result = umap_result(90)
    fig = result.plot_umap()
    ax = fig.axes[0]
    faces = {tuple(np.round(c.get_facecolor()[0], 3)): c.get_zorder() for c in ax.collections}
    grey = tuple(np.round(to_rgba(_plot.UNASSIGNED_COLOR), 3))
    assert faces[grey] < min(z for face, z in faces.items() if face != grey)  # drawn beneath every type
    assert result.umap.shape == (90, 2)  # every cell embedded: kept for to_adata
    frame = ax.get_window_extent()
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text()]  # leader lines are texts without words
    for text in labels:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
    assert {t.get_text() for t in labels} == {"alpha", "beta", "delta?"}
    colors = set(_plot.type_colors([f"type{i}" for i in range(60)]).values()) - {_plot.UNASSIGNED_COLOR}
    assert not any(len(set(to_hex(c)[1:][i:i + 2] for i in (0, 2, 4))) == 1 for c in colors)  # no grey type colour


def test_large_reports_sample_the_umap_and_show_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_plot, "UMAP_MAX_CELLS", 60)
    result = umap_result(150)
    result.report(tmp_path / "report", progress=True)
    assert result.umap is None  # a sample's UMAP is not every cell's
    assert "a random 60 of the 150 cells" in (tmp_path / "report" / "summary.md").read_text()
    assert "report" in capsys.readouterr().err
    assert "a random 60 of the 150 cells" in result.plot_umap().get_suptitle()


def test_small_shares_are_not_written_as_zero_percent():
    assert [_plot.share_text(s) for s in (0, 0.003, 0.009, 0.5)] == ["0%", "<1%", "<1%", "50%"]
    result = umap_result(300)
    result.obs.iloc[0, result.obs.columns.get_loc("cluster")] = 7
    result.clusters = pd.concat([result.clusters, result.clusters.iloc[:1].rename(index={0: 7}).assign(size=1)])
    result.clusters.loc[0, "size"] -= 1
    texts = [t.get_text() for t in result.plot_confidence().axes[0].texts]
    assert " 1 (<1%)" in texts and not any("(0%)" in t for t in texts)
