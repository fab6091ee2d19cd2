"""Accuracy against gene overlap: the bundled references annotating real queries restricted to gene panels
of decreasing size, as targeted platforms measure them.

    python benchmarks/overlap.py [--studies blood pancreas] [--panels 1000 500 400 300 250 200 175 150 100 60]
                                 [--seeds 0 1] [--no-logreg] [--out benchmarks/results/overlap.csv]
                                 [--data-dir DIR] [--write-package-data]

Studies (``STUDIES``): only queries the bundled reference was not trained on count as points.
- blood: ``pbmc-human`` (Zheng 2017 sorted populations) annotating PBMC 3k (another 10x run and lab), scored at
  the shared type of ``benchmarks/harmonization/blood.csv``; its panels are ``crossstudy.blood_panel`` (the
  blood markers, then the query's most variable genes).
- pancreas: ``pancreas-human`` annotating Baron *mouse* pancreas through the ortholog table
  (``query_organism="mouse"``), at the shared type of ``pancreas.csv``; its panels are the pancreas markers of
  ``PANCREAS_MARKERS`` the query measures, then its most variable genes (chosen as ``blood_panel`` chooses
  them, without the labels). Baron human's donors are not a query here: ``pancreas-human`` was trained on all
  of them.
Each query is also read whole (panel ``all``). No reference is trained: the bundled weights transfer, once
per seed (the transfer's fine-tuning seed); a panel the overlap rule refuses is recorded with its error. The
peer ``logreg`` (``peers.logreg_predict``, deterministic) is retrained on the genes each panel shares with the
reference's training study, for comparison; ``--no-logreg`` leaves it out.

Per (study, panel, seed, method): the genes the transfer read (``network_genes``: of the reference's genes;
``context_genes``), the overlap share the overlap rule compares with ``min_overlap`` (network plus context
genes over the reference's genes), accuracy and macro-F1 over the types with at least ``crossstudy.MIN_CELLS``
query cells, on the query cells whose type the reference has (``crossstudy.score``), and whether the transfer
warned about the overlap (with the curve the package shipped when it ran). Writes ``--out`` and a figure beside it (``.png``). ``--write-package-data`` also
writes the itclust-hub points to ``itclust_hub/data/overlap_accuracy.json``, which the overlap warning quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

import accuracy
import crossstudy
import splits

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "overlap.csv"
PACKAGE_DATA = HERE.parent / "itclust_hub" / "data" / "overlap_accuracy.json"
PANELS = (1000, 500, 400, 300, 250, 200, 175, 150, 100, 60)
# A panel whose accuracy is more than this below its whole query's, on any study, makes the warning apply
# from that panel's overlap up (``safe_overlap``).
DROP = 0.05

# Markers of the pancreas types (endocrine, exocrine, ductal, stellate, endothelial, immune, Schwann) and
# housekeeping genes, mouse symbols; ``pancreas_panel`` adds the query's most variable genes.
PANCREAS_MARKERS = (
    "Actb", "Gapdh", "B2m",
    "Ins1", "Ins2", "Iapp", "Gcg", "Arx", "Irx2", "Sst", "Hhex", "Ppy", "Pyy", "Ghrl", "Chga", "Chgb", "Pdx1",
    "Nkx6-1", "Mafa", "Mafb", "Neurod1", "Isl1", "Pax6",
    "Cpa1", "Prss2", "Cela1", "Ctrb1", "Pnlip", "Cel", "Krt19", "Krt7", "Sox9", "Spp1", "Cftr",
    "Pdgfrb", "Rgs5", "Col1a1", "Col1a2", "Acta2", "Sparc", "Pecam1", "Plvap", "Flt1", "Cdh5", "Kdr",
    "Ptprc", "Cd68", "C1qa", "Cd74", "Cd3e", "Cd79a", "Cpa3", "Kit", "Sox10", "Plp1", "Mpz",
)


class Study(NamedTuple):
    """A bundled reference annotating a study it was not trained on, scored at ``level``; ``trained_on`` is
    the reference's training study (its labels' names, and the peer's training data)."""

    name: str
    reference: str
    trained_on: str
    query: str
    tissue: str
    level: str = "shared_type"


STUDIES = {
    "blood": Study("blood", "pbmc-human", "zheng2017_sorted_pbmc", "pbmc3k_labeled", "blood"),
    "pancreas": Study("pancreas", "pancreas-human", "baron_human_pancreas", "baron_mouse_pancreas", "pancreas"),
}


def pancreas_panel(query, size: int) -> np.ndarray:
    """``size`` genes of a mouse pancreas query: the ``PANCREAS_MARKERS`` it measures, then its most variable
    genes in ``crossstudy.blood_panel``'s order (no blood marker is a mouse symbol, so that order is the
    query's most variable genes alone)."""
    markers = [gene for gene in PANCREAS_MARKERS if gene in query.var_names]
    assert not set(crossstudy.BLOOD_MARKERS) & set(query.var_names), "blood markers among the query's genes"
    variable = [gene for gene in crossstudy.blood_panel(query, size + len(markers)) if gene not in markers]
    return np.array(markers + variable)[:size]


def panel_genes(study: Study, query, size: int) -> np.ndarray:
    """The study's panel of ``size`` genes (markers first, so a panel smaller than the markers is markers)."""
    if study.tissue == "blood":
        return crossstudy.blood_panel(query, size)[:size]
    return pancreas_panel(query, size)


def transfer(model, query, query_organism: str | None, seed: int):
    """The bundled reference's transfer of ``query``, and whether it warned about the gene overlap."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.transfer(query, query_organism=query_organism, seed=seed, progress=False)
    return result, any("of the reference's" in str(w.message) for w in caught if issubclass(w.category, UserWarning))


def run(studies: list[Study], panels: list[int], seeds: list[int], logreg: bool, data_dir: Path,
        out: Path) -> pd.DataFrame:
    """Every study at every panel size (and whole) for every seed; the table is rewritten after each point."""
    import itclust_hub as ih

    orthologs = splits.load_orthologs(data_dir)
    rows = []
    for study in studies:
        model = ih.ItClust.from_pretrained(study.reference)
        n_reference = len(model.genes)
        table = crossstudy.harmonization(study.tissue)
        reference_types = set(crossstudy.to_shared(table, study.trained_on, model.cell_types, study.level))
        whole = crossstudy.load_study(study.query, data_dir).copy()
        trained_on = crossstudy.load_study(study.trained_on, data_dir)
        label_key, query_key = crossstudy.STUDIES[study.trained_on][0], crossstudy.STUDIES[study.query][0]
        query_organism = crossstudy.STUDIES[study.query][1]
        query_organism = None if query_organism == model.organism else query_organism
        truth = crossstudy.to_shared(table, study.query, whole.obs[query_key].astype(str), study.level)

        def scores(labels):  # on the known cells, labels of the reference's study as shared names
            predicted = crossstudy.to_shared(table, study.trained_on, labels, study.level)
            return crossstudy.score(truth, predicted, reference_types, accuracy.Prediction(labels))[0]

        for size in [None, *panels]:
            query = whole if size is None else whole[:, panel_genes(study, whole, size)].copy()
            ids = {"study": study.name, "reference": study.reference, "query": study.query,
                   "panel": "all" if size is None else str(size), "query_genes": query.n_vars}
            for seed in seeds:
                try:
                    result, warned = transfer(model, query, query_organism, seed)
                except ih.ItClustError as err:
                    rows.append({**ids, "seed": seed, "method": "itclust-hub", "refused": str(err)})
                    print(f"{study.name:<9} {ids['panel']:>5} seed {seed} refused: {err}", flush=True)
                    continue
                network, context = result.provenance["genes"]["n_overlap"], result.provenance["context_genes"]
                overlap = {"network_genes": network, "context_genes": context, "reference_genes": n_reference,
                           "overlap": (network + context) / n_reference}
                row = scores(result.labels.reindex(query.obs_names).astype(str).to_numpy())
                rows.append({**ids, "seed": seed, "method": "itclust-hub", **overlap, "accuracy": row["accuracy"],
                             "macro_f1": row["macro_f1"], "n_known": row["n_known"], "warned": warned})
                print(f"{study.name:<9} {ids['panel']:>5} seed {seed} itclust-hub: {network}+{context} genes "
                      f"({overlap['overlap']:.1%}) acc {row['accuracy']:.3f} F1 {row['macro_f1']:.3f}"
                      f"{'  warned' if warned else ''}", flush=True)
            if logreg:
                pair = splits.Pair(study.name, trained_on, label_key, query, truth, query_organism)
                row = scores(accuracy.run_peers("logreg", pair, orthologs)["logreg"].labels)
                shared = splits.peer_inputs(pair, orthologs)[1].n_vars
                rows.append({**ids, "method": "logreg", "shared_genes": shared, "accuracy": row["accuracy"],
                             "macro_f1": row["macro_f1"], "n_known": row["n_known"]})
                print(f"{study.name:<9} {ids['panel']:>5} logreg on {shared} shared genes: acc {row['accuracy']:.3f} "
                      f"F1 {row['macro_f1']:.3f}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(out, index=False)
    return pd.DataFrame(rows)


def points(table: pd.DataFrame) -> pd.DataFrame:
    """itclust-hub's points: per study and panel, the overlap share and the range of accuracy and macro-F1
    over seeds (refused panels left out), sorted by study and overlap."""
    ours = table[(table["method"] == "itclust-hub") & table["accuracy"].notna()]
    grouped = ours.groupby(["study", "panel"])
    frame = grouped.agg(overlap=("overlap", "mean"), network_genes=("network_genes", "first"),
                        context_genes=("context_genes", "first"), reference_genes=("reference_genes", "first"),
                        accuracy_min=("accuracy", "min"), accuracy_max=("accuracy", "max"),
                        accuracy_mean=("accuracy", "mean"), macro_f1_min=("macro_f1", "min"),
                        macro_f1_max=("macro_f1", "max"), seeds=("seed", "size"))
    return frame.reset_index().sort_values(["study", "overlap"], ignore_index=True)


def safe_overlap(curve: pd.DataFrame) -> float:
    """The lowest measured overlap from which up every study's mean accuracy stays within ``DROP`` of its
    whole query's: below it the measured accuracy falls off."""
    safe = []
    for _, study in curve.groupby("study"):
        whole = study.loc[study["panel"] == "all", "accuracy_mean"].item()
        low = study[study["accuracy_mean"] < whole - DROP]
        above = study[study["overlap"] > (low["overlap"].max() if len(low) else -1.0)]
        safe.append(above["overlap"].min())
    return float(max(safe))


def package_data(curve: pd.DataFrame, seeds: list[int]) -> dict:
    """The JSON the overlap warning reads: each study's points (panel, overlap share, accuracy and macro-F1
    range over seeds), sorted by overlap, and the overlap below which the warning applies."""
    studies = {}
    for name, study in curve.groupby("study"):
        spec = STUDIES[name]
        studies[name] = {
            "reference": spec.reference, "query": spec.query, "level": spec.level,
            "points": [{"panel": row["panel"], "overlap": round(row["overlap"], 4),
                        "accuracy": [round(row["accuracy_min"], 3), round(row["accuracy_max"], 3)],
                        "macro_f1": [round(row["macro_f1_min"], 3), round(row["macro_f1_max"], 3)]}
                       for _, row in study.iterrows()]}
    return {"source": "benchmarks/overlap.py --write-package-data (benchmarks/RESULTS.md, 'Accuracy against "
                      "gene overlap')",
            "overlap": "genes the reference reads in the query (its network genes plus context genes) over "
                       "its network genes, as the overlap rule counts them",
            "accuracy": f"share of known query cells labelled right at the shared type, range over seeds {seeds}",
            "warn_below": math.floor(safe_overlap(curve) * 1e4) / 1e4, "studies": studies}


def figure(table: pd.DataFrame, path: Path, warn_below: float) -> None:
    """Accuracy and macro-F1 against the overlap share (mean over seeds), a colour per study, solid for
    itclust-hub and dashed for the peer (drawn at the panel's itclust-hub overlap, so not where it refused)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    ours = table[(table["method"] == "itclust-hub") & table["accuracy"].notna()]
    overlap = ours.groupby(["study", "panel"])["overlap"].mean()
    scored = table[table["accuracy"].notna()].join(overlap, on=["study", "panel"], rsuffix="_panel")
    scored = scored[scored["overlap_panel"].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, metric, title in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1 (types >= 10 cells)")):
        for color, (study, runs) in zip(("C0", "C2", "C1", "C3"), scored.groupby("study")):
            for method, style in (("itclust-hub", "-o"), ("logreg", "--s")):
                line = runs[runs["method"] == method].groupby("overlap_panel")[metric].mean()
                if len(line):
                    ax.plot(line.index, line.to_numpy(), style, color=color, markersize=4,
                            label=f"{study} ({STUDIES[study].query}): {method}")
        ax.axvline(0.05, color="grey", linestyle=":")
        ax.axvline(warn_below, color="grey", linestyle="-.")
        ax.set_xscale("log")
        ax.set_xticks([0.05, 0.1, 0.2, 0.5, 1.0])
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("overlap: genes read (network + context) / network genes (log scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score on known query cells")
    for x, text in ((0.051, "refused\nbelow"), (warn_below * 1.02, "warned\nbelow")):
        axes[0].text(x, 0.33, text, fontsize=7, color="grey", transform=axes[0].get_xaxis_transform())
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    parser.add_argument("--panels", type=int, nargs="+", default=list(PANELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-logreg", action="store_true", help="leave the logistic-regression peer out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", type=Path, default=splits.DATA_DIR)
    parser.add_argument("--write-package-data", action="store_true",
                        help=f"write the measured curve to {PACKAGE_DATA.relative_to(HERE.parent)}")
    args = parser.parse_args(argv)
    studies = [STUDIES[name] for name in args.studies]
    needed = {f"{s}.h5ad" for study in studies for s in (study.trained_on, study.query)} | {splits.FILES["orthologs"]}
    if not all((args.data_dir / name).exists() for name in needed):
        print(f"skipping the overlap benchmark: it reads {', '.join(sorted(needed))} from {args.data_dir}")
        return 0
    accuracy.quiet_peers()

    table = run(studies, args.panels, args.seeds, not args.no_logreg, args.data_dir, args.out)
    curve = points(table)
    figure(table, args.out.with_suffix(".png"), safe_overlap(curve))
    print(curve.to_string(index=False))
    print(f"accuracy holds from {safe_overlap(curve):.1%} overlap up (within {DROP} of each whole query)")
    if args.write_package_data:
        PACKAGE_DATA.write_text(json.dumps(package_data(curve, args.seeds), indent=1) + "\n")
        print(f"wrote {PACKAGE_DATA}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
