"""A transfer report folder: the figures of :mod:`itclust_hub._plot` as PNGs and a ``summary.md`` that
says what was assumed (reference, revision, gene overlap, input type) and what came out (counts per
type, clusters, novel clusters, agreement with the query's own labels)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import _plot
from ._errors import ItClustError
from ._ontology import UNASSIGNED
from ._outputs import atomic_path, check_output_files
from ._progress import progress_bar

UMAP_PNG = "umap.png"
CONFIDENCE_PNG = "cluster_confidence.png"
MARKERS_PNG = "marker_dotplot.png"
CONFUSION_PNG = "confusion.png"
SUMMARY_MD = "summary.md"
DPI = 150
# Share of cells in novel clusters, and of reference genes found, below/above which the summary warns.
WARN_UNASSIGNED = 0.25
WARN_OVERLAP = 0.5


def report_files(folder, *, markers: bool, confusion: bool) -> list[Path]:
    """The paths a report into ``folder`` writes: PNGs (markers/confusion when drawn) and summary.md."""
    folder = Path(folder)
    names = [UMAP_PNG, CONFIDENCE_PNG] + [MARKERS_PNG] * markers + [CONFUSION_PNG] * confusion + [SUMMARY_MD]
    return [folder / name for name in names]


def gene_overlap_text(provenance: dict) -> str:
    """One sentence on how many reference genes the query measures and how they were matched."""
    genes = provenance.get("genes", {})
    if not genes:
        return "gene overlap unknown"
    text = (f"{genes['n_overlap']:,} of {genes['n_reference_genes']:,} reference genes in the query "
            f"({genes['fraction']:.1%}), matched by {genes.get('id_type', 'name')} "
            f"from {genes.get('source', 'var_names')}")
    if genes.get("ortholog_mapped") is not None:
        text += (f" after mapping {genes['ortholog_mapped']:,} {provenance.get('query_organism', 'query')} genes "
                 "through one-to-one orthologs")
    if provenance.get("context_genes"):
        text += (f"; the missing ones filled in with the help of {provenance['context_genes']:,} other genes it "
                 "measures (context genes)")
    if provenance.get("depth_share"):
        text += (f"; cells normalised by their estimated whole-transcriptome depth (the genes measured hold "
                 f"{provenance['depth_share']:.0%} of a reference cell's expression)")
    return text


def organism_text(provenance: dict) -> str:
    """The query's organism and how it was known (given, detected from its gene names, or assumed)."""
    choice = provenance.get("organism_choice")
    organism = provenance.get("query_organism", "unknown")
    if not choice:
        return organism
    if choice["how"] == "given":
        return f"{organism} (given)"
    how = {"detected": "detected from its gene names", "assumed": "the reference's: its gene names do not tell"}
    return f"{organism} ({how[choice['how']]}: {choice['evidence']})"


def reference_origin(provenance: dict) -> str:
    """Where the reference came from and which revision, e.g. "revision `abc...` of Hub repo lab/x"."""
    source, revision, path = provenance.get("source"), provenance.get("revision"), provenance.get("path")
    where = {"hub": f"Hub repo {provenance.get('repo_id')}", "bundled": "the copy bundled with itclust-hub",
             "local": f"local folder {path}", "url": f"file server copy in {path}"}
    where = where.get(source, "trained in this session")
    return f"revision `{revision}` from {where}" if revision else f"{where} (no revision)"


def input_type_text(provenance: dict) -> str:
    """What the query's values were taken to be, and whether that was detected or chosen."""
    used, detected = provenance.get("input_type", "unknown"), provenance.get("input_type_detected")
    if detected is None or used == detected:
        return f"{used} (detected)"
    return f"{used} (chosen by the user; detected {detected})"


def scale_text(provenance: dict) -> str:
    """Whose gene statistics the query was scaled with."""
    return {"reference": "the reference's gene means and standard deviations",
            "own": "the query's own gene means and standard deviations"}.get(provenance.get("scale"), "unknown")


def warnings(result) -> list[str]:
    """Plain-language warnings: the transfer's own (``provenance["warnings"]``: organism detected or doubtful,
    empty cells), then those of a query that does not fit the reference well."""
    out = list(result.provenance.get("warnings", []))
    unassigned = float(result.obs["novel"].mean())
    if unassigned >= WARN_UNASSIGNED:
        out.append(f"{unassigned:.0%} of cells fall in clusters judged novel (Unassigned): the query may hold cell "
                   "types, a tissue or a species this reference does not cover; do not trust the nearest labels there.")
    fraction = result.provenance.get("genes", {}).get("fraction")
    if fraction is not None and fraction < WARN_OVERLAP:
        out.append(f"only {fraction:.0%} of the reference genes are measured in the query; missing genes are filled "
                   "in from the measured ones, so labels are less reliable (rare types most).")
    if result.provenance.get("converged") is False:
        out.append("fine-tuning stopped at max_iter before labels settled; consider a larger max_iter.")
    return out


def novel_text(result) -> str:
    """How many cells are novel, and why: query clusters no type matches, and fine-tuned clusters of low
    confidence where that rule is on (``min_confidence`` above 0)."""
    reasons = []
    if result.query_clusters is not None:
        own = result.query_clusters[result.query_clusters["novel"]]
        reasons.append(f"{len(own)} of {len(result.query_clusters)} query clusters no reference type matches"
                       + (" (nearest: " + ", ".join(f"{t} ({n:,} cells)" for t, n in zip(own["nearest_type"], own["size"]))
                          + ")" if len(own) else ""))
    if result.provenance.get("settings", {}).get("min_confidence"):
        clusters = result.clusters[result.clusters["novel"]]
        reasons.append(f"{len(clusters)} of {len(result.clusters)} clusters of low confidence")
    text = f"{int(result.obs['novel'].sum()):,} cells labelled {UNASSIGNED}"
    return text + (": " + "; ".join(reasons) if reasons else "")


def label_counts(result) -> pd.DataFrame:
    """Cells and share per predicted label, largest first, ``"Unassigned"`` last."""
    counts = result.labels.value_counts()
    order = [label for label in counts.index if label != UNASSIGNED] + [UNASSIGNED] * (UNASSIGNED in counts.index)
    counts = counts[order]
    return pd.DataFrame({"cells": counts, "share": counts / counts.sum()})


def _table(frame: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    return [header, rule, *("| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False))]


def summary_markdown(result, figures: list[str], truth: pd.Series | None = None, truth_key: str | None = None,
                     notes: list[str] = ()) -> str:
    """The text of ``summary.md``: provenance, warnings, counts per type, clusters, agreement, figures."""
    prov = result.provenance
    clusters = result.clusters.sort_values("size", ascending=False)
    lines = [
        "# ItClust transfer report",
        "",
        f"- Reference: **{prov.get('reference', 'unknown')}** version {prov.get('reference_version', '?')}, "
        f"{reference_origin(prov)}",
        f"- Query: {len(result.obs):,} cells, organism {organism_text(prov)}",
        f"- Genes: {gene_overlap_text(prov)}",
        f"- Input type assumed: {input_type_text(prov)}",
        f"- Scaled with: {scale_text(prov)}",
        f"- Fine-tuning: {prov.get('n_iter', '?')} iterations "
        f"({'converged' if prov.get('converged') else 'not converged'}); "
        f"{result.changed_fraction:.1%} of cells changed type from the source network's direct prediction",
        f"- Novel: {novel_text(result)}",
        "",
    ]
    for warning in warnings(result):
        lines += [f"> **Warning:** {warning}", ""]
    counts = label_counts(result)
    lines += ["## Cells per predicted type", "",
              *_table(pd.DataFrame({"label": counts.index, "cells": counts["cells"].map("{:,}".format),
                                    "share": counts["share"].map("{:.1%}".format)})), ""]
    lines += ["## Clusters", "",
              "Confidence is the share of a cluster's cells that started self-training with its type; similarity is "
              "the correlation of its mean expression with its "
              "type's, over the genes that differ most between types. A cluster is novel when its confidence is low.",
              "",
              *_table(pd.DataFrame({"cluster": clusters.index, "nearest type": clusters["nearest_label"],
                                    "label": clusters["label"], "cells": clusters["size"],
                                    "confidence": clusters["confidence"].map("{:.2f}".format),
                                    "similarity": clusters["similarity"].map("{:.2f}".format),
                                    "novel": clusters["novel"].map({True: "**yes**", False: "no"})})), ""]
    if result.query_clusters is not None:
        own = result.query_clusters.sort_values("size", ascending=False)
        lines += ["## The query's own clusters", "",
                  "Clusters of the query's own structure, found without the reference. Each is compared with the "
                  "reference types (correlation of mean expression over every measured gene, each dataset scaled "
                  "with its own statistics); one that matches none is a population the reference does not know, "
                  f"labelled {UNASSIGNED}. Its top genes (most above its nearest type) are where to start naming it.",
                  "", *_table(pd.DataFrame({"query cluster": own.index, "cells": own["size"],
                                            "nearest type": own["nearest_type"],
                                            "similarity": own["similarity"].map("{:.2f}".format),
                                            "novel": own["novel"].map({True: "**yes**", False: "no"}),
                                            "top genes": own["top_genes"]})), ""]
    if truth is not None:
        score = _plot.agreement(result, truth)
        lines += [f"## Agreement with `{truth_key}`", "",
                  f"{score:.1%} of the cells whose own label names a reference type got that label "
                  f"(see {CONFUSION_PNG}).", ""]
    for note in notes:
        lines += [f"_{note}_", ""]
    lines += ["## Figures", "", *(f"![{Path(f).stem}]({f})" for f in figures), ""]
    return "\n".join(lines)


def write_report(result, folder, *, adata=None, model=None, truth_key: str | None = None, force: bool = False,
                 orthologs=None, n_genes: int = 3, seed: int = 0, progress: bool | None = None) -> list[Path]:
    """Write the report of ``result`` into ``folder`` and return the paths written.

    Always: ``umap.png``, ``cluster_confidence.png`` and ``summary.md``. With ``adata`` and ``model``:
    ``marker_dotplot.png`` (``orthologs`` as in the transfer). With ``adata`` and
    ``truth_key`` (an ``obs`` column of the query's own labels): ``confusion.png``. Nothing is
    overwritten unless ``force``, which replaces these files and nothing else in ``folder``; every path is
    checked before anything is drawn. A bar shows the figure being drawn (``progress``: None shows it on a
    terminal only); above ``_plot.UMAP_MAX_CELLS`` cells the UMAP draws a random sample, as the summary says.
    """
    if truth_key is not None and adata is None:
        raise ItClustError("truth_key= needs adata=, the AnnData that holds that obs column")
    if truth_key is not None and truth_key not in adata.obs.columns:
        raise ItClustError(f"truth_key {truth_key!r} is not an obs column "
                           f"(have {', '.join(map(str, adata.obs.columns))})")
    if adata is not None:
        result._check_cells(adata)
    draw_markers = adata is not None and model is not None
    paths = report_files(folder, markers=draw_markers, confusion=truth_key is not None)
    check_output_files(paths, force=force)
    Path(folder).mkdir(parents=True, exist_ok=True)
    figures = {UMAP_PNG: lambda: _plot.plot_umap(result, seed=seed),
               CONFIDENCE_PNG: lambda: _plot.plot_confidence(result)}
    notes = []
    if len(result.obs) > _plot.UMAP_MAX_CELLS:
        notes.append(f"The UMAP draws a random {_plot.UMAP_MAX_CELLS:,} of the {len(result.obs):,} cells (an "
                     "embedding of every cell takes minutes and draws no clearer picture).")
    if draw_markers:
        figures[MARKERS_PNG] = lambda: _plot.plot_markers(result, adata, model, n_genes=n_genes, orthologs=orthologs)
    else:
        notes.append("No marker dot plot: pass adata= and model= (the CLI always does).")
    truth = None
    if truth_key is not None:
        truth = adata.obs[truth_key]
        figures[CONFUSION_PNG] = lambda: _plot.plot_confusion(result, truth, truth_key=truth_key)
    with progress_bar(len(figures), progress, desc="report", unit="figure") as bar:
        for name, draw in figures.items():
            bar.set_postfix_str(name)
            with atomic_path(Path(folder) / name) as tmp:
                draw().savefig(tmp, dpi=DPI)
            bar.update()
    with atomic_path(Path(folder) / SUMMARY_MD) as tmp:
        tmp.write_text(summary_markdown(result, list(figures), truth, truth_key, notes))
    return paths
