"""Figures of a transfer: UMAP of the fine-tuned embedding, per-cluster confidence, reference marker
genes in the query, and a confusion heatmap against the query's own labels.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no
display needed); save it with ``fig.savefig(path)``. Each figure carries its own title, axis labels and
legend so it can be read alone.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._errors import ItClustError
from ._ontology import UNASSIGNED, is_ontology_id

# A UMAP plot of more cells draws a random sample of this many: umap-learn took ~3 minutes on 100k cells (one
# thread); the sample's picture of the clusters is the same and the plot is legible.
UMAP_MAX_CELLS = 20_000
UNASSIGNED_COLOR = "#d0d0d0"  # light grey, drawn beneath the types' colours; no type colour is grey
NOVEL_COLOR = "#c0392b"
CONFIDENCE_COLOR = "#1f4e79"
SIMILARITY_COLOR = "#e08a1e"


def _palette() -> list[str]:
    """Distinct colours for cell types: tab20's saturated half first, without its reds and greys, which mean
    novel and Unassigned here; then tab20b and tab20c (without its greys)."""
    tab20 = [c for i, c in enumerate(colormaps["tab20"].colors) if i not in (6, 7, 14, 15)]
    colors = tab20[0::2] + tab20[1::2] + list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors)[:16]
    return [to_hex(c) for c in colors]


def type_colors(cell_types) -> dict[str, str]:
    """One colour per reference cell type (in reference order), grey for ``"Unassigned"``."""
    palette = _palette()
    colors = {t: palette[i % len(palette)] for i, t in enumerate(cell_types)}
    colors[UNASSIGNED] = UNASSIGNED_COLOR
    return colors


def _label_order(result, labels) -> list[str]:
    """Labels in reference order, ``"Unassigned"`` last; only those present in ``labels``."""
    present = set(labels)
    order = [t for t in result.probabilities.columns if t in present]
    return order + [t for t in sorted(present - set(order)) if t != UNASSIGNED] + (
        [UNASSIGNED] if UNASSIGNED in present else [])


def share_text(share: float) -> str:
    """A share as a whole percentage; "<1%" rather than "0%" for a share above zero."""
    return "<1%" if 0 < share < 0.01 else f"{share:.0%}"


def _title(result) -> str:
    """First title line of every figure: reference, cells, clusters and how many cells are novel."""
    ref = result.provenance.get("reference", "reference")
    novel = result.obs["novel"].to_numpy()
    return (f"{ref} \u2192 query: {len(result.obs):,} cells, {len(result.clusters)} clusters, "
            f"{int(novel.sum()):,} cells novel ({share_text(novel.mean())}, Unassigned)")


def _suptitle(fig: Figure, *lines: str, fontsize: float = 12) -> None:
    """A figure title of ``lines``, each wrapped to the figure's width."""
    chars = max(30, int(fig.get_figwidth() * 72 / (fontsize * 0.6)))
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize=fontsize)


def umap_cells(n_cells: int, seed: int = 0) -> np.ndarray:
    """The cells a UMAP plot draws: all of them, or a random ``UMAP_MAX_CELLS`` (sorted) above that."""
    if n_cells <= UMAP_MAX_CELLS:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, UMAP_MAX_CELLS, replace=False))


def umap_coordinates(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two-dimensional UMAP (umap-learn) of the fine-tuned embedding, deterministic for a seed."""
    import umap

    n = len(embedding)
    if n < 4:
        raise ItClustError(f"a UMAP needs at least 4 cells, the result has {n}")
    reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.3, random_state=seed, n_jobs=1)
    return reducer.fit_transform(np.asarray(embedding, dtype=np.float32))


def _groups(result) -> tuple[pd.Series, list[str], dict[str, str]]:
    """Each cell's group: its label, or ``"Unassigned (nearest: T)"`` in a novel cluster grown from T.

    Returns the per-cell groups, the groups in reference order (novel ones last) and group -> nearest type.
    """
    obs = result.obs
    nearest = obs["nearest_label"].astype(str)
    group = obs["label"].astype(str).where(~obs["novel"].to_numpy(bool), UNASSIGNED + " (nearest: " + nearest + ")")
    rank = {t: i for i, t in enumerate(result.probabilities.columns)}
    frame = pd.DataFrame({"group": group, "nearest": nearest, "novel": obs["novel"].to_numpy(bool)})
    frame = frame.drop_duplicates("group").assign(rank=lambda f: f["nearest"].map(rank))
    return group, frame.sort_values(["novel", "rank"])["group"].tolist(), dict(zip(frame["group"], frame["nearest"]))


def plot_umap(result, *, coords: np.ndarray | None = None, seed: int = 0) -> Figure:
    """UMAP of ``result.embedding``: left coloured by predicted label, right by cluster confidence.

    Cells of novel clusters (``"Unassigned"``) are light grey, drawn beneath the others, each novel cluster
    named by the type it grew from in red, and drawn as crosses in the confidence panel. Above
    ``UMAP_MAX_CELLS`` cells a random sample of that many is embedded and drawn (the title says so);
    otherwise the coordinates of all cells are kept in ``result.umap``. ``coords`` reuses precomputed 2-D
    coordinates (cells x 2) instead of running UMAP.
    """
    cells = np.arange(len(result.obs)) if coords is not None else umap_cells(len(result.obs), seed)
    if coords is None:
        coords = umap_coordinates(result.embedding[cells], seed)
        if len(cells) == len(result.obs):
            result.umap = coords
    coords = np.asarray(coords)
    obs = result.obs.iloc[cells]
    novel = obs["novel"].to_numpy(bool)
    colors = type_colors(result.probabilities.columns)
    size = float(np.clip(40000 / len(obs), 1.5, 25))
    fig = Figure(figsize=(15, 6.5), layout="constrained")
    ax_label, ax_conf = fig.subplots(1, 2)
    group, order, nearest = _groups(result)
    group = group.iloc[cells]
    counts = group.value_counts()
    handles, tags = [], []
    for name in order:
        mask = (group == name).to_numpy()
        if not mask.any():
            continue
        unassigned = name not in colors
        color = UNASSIGNED_COLOR if unassigned else colors[name]
        ax_label.scatter(coords[mask, 0], coords[mask, 1], s=size, c=color, linewidths=0, rasterized=True,
                         zorder=1 if unassigned else 2)
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, markersize=7,
                              label=f"{name} ({counts[name]:,})"))
        tags.append((coords[mask], f"{nearest[name]}?" if unassigned else name,
                     NOVEL_COLOR if unassigned else "black", counts[name]))
    legend = ax_label.legend(handles=handles, title="predicted label (cells)", loc="center left",
                             bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8, title_fontsize=9,
                             ncols=1 if len(handles) <= 18 else 2)
    for text, handle in zip(legend.get_texts(), handles):
        if handle.get_label().startswith(UNASSIGNED):
            text.set_color(NOVEL_COLOR)
    ax_label.set_title("Predicted label\n(grey, red \"type?\": novel cluster, labelled Unassigned)", fontsize=11)
    confidence = obs["cluster_confidence"].to_numpy()
    for mask, marker in ((~novel, "o"), (novel, "x")):
        points = ax_conf.scatter(coords[mask, 0], coords[mask, 1], s=size * (1.6 if marker == "x" else 1),
                                 c=confidence[mask], cmap="RdYlBu", vmin=0, vmax=1, marker=marker,
                                 linewidths=0 if marker == "o" else 0.8, rasterized=True)
    bar = fig.colorbar(points, ax=ax_conf, shrink=0.8, label="cluster confidence (share that started as its type)")
    threshold = result.provenance.get("settings", {}).get("min_confidence") or None  # 0: the rule is off
    if threshold is not None:
        bar.ax.axhline(threshold, color="black", linewidth=1.5)
    ax_conf.legend([Line2D([], [], marker=m, linestyle="", color="#444444", markersize=6) for m in ("o", "x")],
                   ["assigned cluster", "novel cluster (Unassigned)"], loc="upper center", bbox_to_anchor=(0.5, -0.06),
                   ncols=2, frameon=False, fontsize=8)
    title = "Cluster confidence\n(red: few of its cells started as its type"
    ax_conf.set_title(title + (f"; novel below {threshold:g})" if threshold is not None else ")"), fontsize=11)
    for ax in (ax_label, ax_conf):
        ax.margins(0.08)
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
    what = "UMAP of the fine-tuned ItClust embedding"
    if len(cells) < len(result.obs):
        what += f" (a random {len(cells):,} of the {len(result.obs):,} cells; counts are of those drawn)"
    _suptitle(fig, _title(result), what)
    _place_labels(fig, ax_label, tags)
    return fig


def _place_labels(fig: Figure, ax, tags) -> None:
    """Write ``(points, text, colour, weight)`` labels on ``ax``, heaviest first: each on the point nearest
    its points' median, moved up or down until it overlaps no label placed before it and kept inside the
    axes; a label moved off its point gets a thin line to it."""
    FigureCanvasAgg(fig)  # a renderer to measure the text with
    fig.draw_without_rendering()  # runs the layout, so axes have their final size
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    for points, text, color, _ in sorted(tags, key=lambda tag: -tag[3]):
        x, y = points[np.argmin(((points - np.median(points, axis=0)) ** 2).sum(1))]
        label = ax.text(x, y, text, fontsize=8, ha="center", va="center", zorder=4, color=color,
                        path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
        anchor = ax.transData.transform((x, y))
        box = label.get_window_extent(renderer)
        inward = (max(frame.x0 + 2 - box.x0, 0) - max(box.x1 - frame.x1 + 2, 0),
                  max(frame.y0 + 2 - box.y0, 0) - max(box.y1 - frame.y1 + 2, 0))
        for step in range(0, 40):
            shift = box.height * 1.05 * ((step + 1) // 2) * (1 if step % 2 else -1)
            position = anchor + inward + (0, shift)
            label.set_position(ax.transData.inverted().transform(position))
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
        if np.hypot(*(position - anchor)) > box.height:
            ax.annotate("", (x, y), label.get_position(), zorder=3,
                        arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "shrinkA": 4, "shrinkB": 1})
        placed.append(box)


def plot_confidence(result) -> Figure:
    """Per-cluster chart, largest first: size, and confidence and similarity against their thresholds.

    Novel clusters (labelled ``"Unassigned"``) are named in red.
    """
    clusters = result.clusters.sort_values("size", ascending=False)
    settings = result.provenance.get("settings", {})
    colors = type_colors(result.probabilities.columns)
    n = len(clusters)
    y = np.arange(n)
    fig = Figure(figsize=(12, 2.2 + 0.42 * n), layout="constrained")
    ax_size, ax_score = fig.subplots(1, 2, sharey=True, width_ratios=[1, 1.6])
    ax_size.barh(y, clusters["size"], color=[UNASSIGNED_COLOR if nov else colors[t]
                                             for t, nov in zip(clusters["nearest_label"], clusters["novel"])])
    total = clusters["size"].sum()
    for yi, size in zip(y, clusters["size"]):
        ax_size.text(size, yi, f" {size:,} ({share_text(size / total)})", va="center", fontsize=8)
    ax_size.set_xlim(0, clusters["size"].max() * 1.45)
    ax_size.set_xlabel("cells in cluster (share of all; grey: novel)")
    ax_size.set_title("Cluster size")
    ax_size.set_yticks(y, [f"{k} \u2192 {t}" + ("  NOVEL" if nov else "")
                           for k, t, nov in zip(clusters.index, clusters["nearest_label"], clusters["novel"])])
    for tick, novel in zip(ax_size.get_yticklabels(), clusters["novel"]):
        if novel:
            tick.set_color(NOVEL_COLOR)
            tick.set_fontweight("bold")
    ax_size.set_ylabel("target cluster \u2192 nearest reference type")
    ax_size.invert_yaxis()
    height = 0.38
    ax_score.barh(y - height / 2, clusters["confidence"], height, color=CONFIDENCE_COLOR,
                  label="confidence (share that started as its type)")
    ax_score.barh(y + height / 2, clusters["similarity"], height, color=SIMILARITY_COLOR,
                  label="similarity (correlation with its type)")
    threshold = settings.get("min_confidence") or None  # 0: the rule is off
    if threshold is not None:
        ax_score.axvline(threshold, color=CONFIDENCE_COLOR, linestyle="--", linewidth=1.4,
                         label=f"novel if confidence < {threshold:g}")
    for i, novel in enumerate(clusters["novel"]):
        if novel:
            ax_score.axhspan(i - 0.5, i + 0.5, color=NOVEL_COLOR, alpha=0.1, linewidth=0)
            low = threshold is not None and clusters["confidence"].iloc[i] < threshold
            ax_score.text(1.01, i, "low confidence" if low else "novel", transform=ax_score.get_yaxis_transform(),
                          va="center", fontsize=8, color=NOVEL_COLOR)
        elif clusters["renamed"].iloc[i]:  # its cells started as another type
            ax_score.text(1.01, i, "renamed by expression", transform=ax_score.get_yaxis_transform(),
                          va="center", fontsize=8, color="0.35")
    ax_score.set_xlim(min(-0.05, float(clusters["similarity"].min()) - 0.05), 1.02)
    ax_score.set_xlabel("score")
    ax_score.set_title("Confidence and similarity (novel clusters shaded red)")
    fig.legend(*ax_score.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    _suptitle(fig, _title(result), "Per-cluster confidence")
    return fig


def marker_genes(type_profiles: np.ndarray, cell_types, types, n_genes: int = 3,
                 present: np.ndarray | None = None) -> dict[str, list[int]]:
    """Top ``n_genes`` reference genes per type in ``types``: profile minus the mean of the other types.

    Only genes higher in the type than in the others on average, and where ``present`` is true (the
    query measures them), are chosen, each gene at most once.
    Returns type -> gene positions (columns of ``type_profiles``).
    """
    profiles = np.asarray(type_profiles, dtype=float)
    index = {t: i for i, t in enumerate(cell_types)}
    usable = np.ones(profiles.shape[1], bool) if present is None else np.asarray(present, bool).copy()
    chosen = {}
    for t in types:
        i = index[t]
        others = np.delete(profiles, i, axis=0)
        score = profiles[i] - (others.mean(axis=0) if len(others) else 0.0)
        score = np.where(usable & (score > 0), score, -np.inf)
        top = [g for g in np.argsort(-score, kind="stable")[:n_genes] if np.isfinite(score[g])]
        usable[top] = False
        chosen[t] = top
    return chosen


def _group_stats(X, groups: np.ndarray, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean expression and fraction of expressing cells per group (rows) and column of ``X``."""
    mean = np.zeros((len(order), X.shape[1]))
    frac = np.zeros_like(mean)
    for r, group in enumerate(order):
        rows = X[np.flatnonzero(groups == group)]
        mean[r] = np.asarray(rows.mean(axis=0)).ravel()
        frac[r] = np.asarray((rows > 0).mean(axis=0)).ravel()
    return mean, frac


def query_expression(result, adata, model, *, orthologs=None):
    """The query's log-normalised expression on the reference genes (CSR, cells x ``model.genes``), the mask
    of reference genes it measures and each reference gene's name in the query, aligned exactly as the
    transfer did (same matrix, gene column, input type and organism, from ``result.provenance``).

    A name is the query's own symbol for the gene (a mouse query's ``Sst`` for the reference's ``SST``,
    through the transfer's orthologs); where the query is matched by Ensembl ID or lacks the gene, the
    reference's symbol (R's ``HLA.DRA`` written ``HLA-DRA``)."""
    from ._query import prepare_query

    result._check_cells(adata)
    prov = result.provenance
    source = prov.get("genes", {}).get("source", "var_names")
    layer, use_raw = prov.get("layer"), prov.get("use_raw", False)
    prepared = prepare_query(
        adata, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism, recipe=model.recipe,
        input_type=prov.get("input_type", "auto"), gene_key=None if source == "var_names" else source,
        layer=layer, use_raw=use_raw, query_organism=prov.get("query_organism"), orthologs=orthologs, min_overlap=0.0,
    )
    alignment = prepared.alignment
    names = np.array([g.replace(".", "-") for g in model.genes], dtype=object)
    if alignment.id_type == "symbol":
        var = adata.raw.var if use_raw else adata.var
        own = var.index if alignment.source == "var_names" else var[alignment.source]
        rows, cols = alignment.matrix.nonzero()
        names[cols] = np.asarray(own, dtype=str)[rows]
    return prepared.data.X, alignment.present, names.tolist()


def plot_markers(result, adata, model, *, n_genes: int = 3, orthologs=None) -> Figure:
    """Dot plot of the reference's marker genes per predicted label, in the query's own expression.

    Markers are the reference's top ``n_genes`` genes per type (mean scaled expression minus that of the
    other types), for the types the query's clusters grew from, among genes the query measures, named as
    the query names them (through the transfer's orthologs across species); top markers the query lacks
    are listed under the plot. Rows are the predicted labels; dot size is the share of cells expressing
    the gene, colour its mean log-normalised expression, read from the matrix the transfer read (its
    ``layer`` or ``use_raw``, in ``result.provenance``); ``orthologs`` must be those of the transfer.
    """
    expression, present, names = query_expression(result, adata, model, orthologs=orthologs)
    types = [t for t in model.cell_types if t in set(result.clusters["nearest_label"])]
    profiles = model.type_profiles.numpy()
    markers = marker_genes(profiles, model.cell_types, types, n_genes, present)
    missing = {t: [names[g] for g in genes if not present[g]]
               for t, genes in marker_genes(profiles, model.cell_types, types, n_genes).items()}
    query_organism = result.provenance.get("query_organism", model.organism)
    across = query_organism != model.organism
    lines = ["reference marker genes as the query names them, grouped by the reference type they mark"
             + (f" ({query_organism} genes matched to {model.organism} ones through one-to-one orthologs)" if across else "")]
    unmeasured = ", ".join(f"{g} ({t})" for t, genes in missing.items() for g in genes)
    if unmeasured:
        lines.append(f"top markers the query lacks{' as one-to-one orthologs' * across}: {unmeasured}")
    return _dotplot(result, expression, names, markers, lines)


def _dotplot(result, expression, genes: list[str], markers: dict[str, list[int]], caption: list[str]) -> Figure:
    """Draw the dot plot: a row per predicted label (novel clusters apart, by nearest type), columns the
    ``markers`` positions in ``genes`` (the names to show), ``caption`` lines under the axis."""
    columns = [g for t in markers for g in markers[t]]
    if not columns:
        raise ItClustError("no marker gene of the predicted types is measured in the query; nothing to plot")
    group, rows, _ = _groups(result)
    mean, frac = _group_stats(expression[:, columns], group.to_numpy(), rows)
    counts = group.value_counts()
    fig = Figure(figsize=(max(8.0, 4.5 + 0.3 * len(columns)), 3.6 + 0.34 * len(rows)), layout="constrained")
    ax = fig.subplots()
    yy, xx = np.meshgrid(np.arange(len(rows)), np.arange(len(columns)), indexing="ij")
    dots = ax.scatter(xx.ravel(), yy.ravel(), s=frac.ravel() * 220, c=mean.ravel(), cmap="Reds",
                      vmin=0, vmax=max(float(mean.max()), 1e-6), edgecolors="#555555", linewidths=0.4)
    ax.set_xticks(np.arange(len(columns)), [genes[g] for g in columns], rotation=90, fontsize=8)
    ax.set_yticks(np.arange(len(rows)), [f"{r} ({counts[r]:,})" for r in rows], fontsize=9)
    for tick in ax.get_yticklabels():
        if tick.get_text().startswith(UNASSIGNED):
            tick.set_color(NOVEL_COLOR)
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    above = ax.get_xaxis_transform()  # x in data, y in axes fractions
    start = 0
    for t, picked in markers.items():
        if not picked:
            continue
        end = start + len(picked)
        if start:
            ax.axvline(start - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
        ax.plot([start - 0.3, end - 0.7], [1.015, 1.015], color="black", linewidth=1, transform=above, clip_on=False)
        ax.text((start + end - 1) / 2, 1.03, t, transform=above, ha="left", va="bottom", fontsize=8, rotation=30,
                rotation_mode="anchor")
        start = end
    ax.set_xlabel("\n".join(textwrap.fill(line, 150) for line in caption), fontsize=9)
    ax.set_ylabel("predicted label in the query (cells)")
    fig.colorbar(dots, ax=ax, shrink=0.6, aspect=15, label="mean log-normalised expression")
    sizes = [0.25, 0.5, 0.75, 1.0]
    ax.legend([Line2D([], [], marker="o", linestyle="", markersize=np.sqrt(f * 220), color="#999999") for f in sizes],
              [f"{f:.0%}" for f in sizes], title="cells expressing", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, fontsize=8, title_fontsize=9, labelspacing=1.2)
    _suptitle(fig, _title(result), "Reference marker genes in the query: a matching query shows large dark dots "
              "where a row's label marks the genes")
    return fig


def compared_labels(result, truth: pd.Series) -> tuple[pd.Series, set[str]]:
    """What ``truth`` is compared with: the predicted labels and the reference's type names, or - when every
    one of ``truth``'s labels is a Cell Ontology id (``CL:0000236``) and the reference carries ids - the
    ids of the predicted labels at the transfer's level and the reference's ids, so labels of any
    vocabulary with ids compare by meaning."""
    truth = pd.Series(truth).astype(str)
    ontology = result.provenance.get("ontology")
    if ontology and truth.map(is_ontology_id).all():
        coarse = result.provenance.get("settings", {}).get("level") == "coarse"
        field, column = ("coarse_id", "coarse_ontology_id") if coarse else ("id", "ontology_id")
        ids = result.obs[column].astype(object).where(result.obs[column].notna(), UNASSIGNED).astype(str)
        return ids, {entry[field] for entry in ontology if entry[field]}
    return result.labels.astype(str), set(result.probabilities.columns)


def agreement(result, truth: pd.Series) -> float:
    """Share of cells whose predicted label equals their own label (case-insensitive), among cells whose
    own label names a reference type (or its Cell Ontology id, see :func:`compared_labels`); NaN when none
    does."""
    predicted, names = compared_labels(result, truth)
    truth = pd.Series(truth, index=result.obs.index).astype(str).str.lower()
    known = truth.isin({t.lower() for t in names})
    same = truth == predicted.str.lower()
    return float(same[known].mean()) if known.any() else float("nan")


def plot_confusion(result, truth: pd.Series, *, truth_key: str = "query label") -> Figure:
    """Heatmap of the query's own labels (rows) against predicted labels (columns), row-normalised.

    Cells show the number of cells; the title gives the agreement on cells whose own label names a
    reference type (compared case-insensitively).
    """
    truth = pd.Series(truth, index=result.obs.index).astype(str)
    predicted, names = compared_labels(result, truth)
    table = pd.crosstab(truth, predicted)
    cols = _label_order(result, table.columns)
    matched = [r for c in cols for r in table.index if r.lower() == c.lower()]
    rows = matched + sorted((r for r in table.index if r not in matched), key=lambda r: -table.loc[r].sum())
    table = table.loc[rows, cols]
    share = table.to_numpy() / table.to_numpy().sum(axis=1, keepdims=True)
    n_known = int(truth.str.lower().isin({t.lower() for t in names}).sum())
    fig = Figure(figsize=(max(8.0, 3.5 + 0.55 * len(cols)), 2.8 + 0.42 * len(rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), count in np.ndenumerate(table.to_numpy()):
        if count:
            ax.text(j, i, f"{count}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(np.arange(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(len(rows)), [f"{r} ({table.loc[r].sum():,})" for r in rows])
    for tick in ax.get_xticklabels():
        if tick.get_text() == UNASSIGNED:
            tick.set_color(NOVEL_COLOR)
    ax.set_xlabel("predicted label")
    ax.set_ylabel(f"query's own label, {truth_key} (cells)")
    fig.colorbar(image, ax=ax, shrink=0.7, label="share of the row's cells")
    _suptitle(fig, f"{result.provenance.get('reference', 'reference')}: predicted vs {truth_key}",
              f"agreement {agreement(result, truth):.1%} on the {n_known:,} cells whose own label is a reference type; "
              f"{(predicted == UNASSIGNED).mean():.0%} of cells Unassigned")
    return fig
