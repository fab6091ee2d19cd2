"""Cross-study benchmark: itclust-hub and its peers annotating studies of other labs, platforms, species and
gene panels.

    python benchmarks/crossstudy.py [--pairs NAME_OR_GROUP ...] [--seeds 0 1 2]
                                    [--methods itclust celltypist ingest logreg]
                                    [--out benchmarks/results/crossstudy.csv] [--data-dir DIR] [--no-docs]

Pairs (``PAIRS``; ``--pairs`` takes pair names or group names): the blood atlas of sorted populations
(Zheng 2017) annotating PBMC 3k, PBMC 3k restricted to two targeted panels (``blood_panel``), and Tabula
Muris mouse immune cells through orthologs; CellBench's three platforms, each annotating the other two;
Baron human <-> mouse pancreas; and, as the within-study row, Baron human with one donor held out. Each
itclust-hub reference is trained on the whole source study with ``train_reference``'s defaults, once per
seed, and transfers the query as it comes (all its genes); each peer is retrained on the genes the pair
shares (``splits.peer_inputs``, through the ortholog table across species) and, being deterministic, run
once per pair. Every method gets raw counts: CellBench keeps its singlets (``demuxlet_cls == "SNG"``) and
PBMC 3k's log-normalised values are turned back into its counts with ``obs["nCount_RNA"]``.

Scoring. Both studies' labels go through the tissue's harmonization table
(``benchmarks/harmonization/<tissue>.csv``: each study's label -> shared type, with Cell Ontology ids, and
its lineage) at the pair's level: the shared type, or the lineage where the query has only that (the mouse
query's "T cell"). A query cell whose type the reference lacks is *novel* (PBMC 3k's DC and platelets, the
mouse granulocytes): it is left out of the scores and reported separately (``_novel.csv``: how many each
method flagged or called Unassigned, and its most common call). On the known cells: accuracy (Unassigned
counts as wrong), macro-F1 over the types with at least ``MIN_CELLS`` query cells, ARI; the recall of every
known type, with its cell count, in ``_recall.csv``.

Writes the per-(seed, pair, method) scores to ``--out`` with itclust-hub's fine-tuning iterations and
share of labels changed per iteration (``changed``), and, when every pair ran, the cross-study table of
README.md and benchmarks/RESULTS.md (``readme_table.py --table crossstudy`` rewrites it from the CSV).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

import accuracy
import metrics
import peers
import readme_table
import splits

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "crossstudy.csv"
MIN_CELLS = 10  # types with fewer query cells are left out of macro-F1 (their recall is in _recall.csv)
UNASSIGNED = accuracy.UNASSIGNED

# study -> (label column, organism); the file is ``<study>.h5ad`` in the data folder
STUDIES = {
    "zheng2017_sorted_pbmc": ("cell_type", "human"),
    "pbmc3k_labeled": ("cell_type", "human"),
    "tabula_muris_immune_mouse": ("cell_type", "mouse"),
    "cellbench_celseq2_3cl": ("cell_type", "human"),
    "cellbench_dropseq_3cl": ("cell_type", "human"),
    "cellbench_10x_3cl_894genes": ("cell_type", "human"),
    "baron_human_pancreas": ("cell_type1", "human"),
    "baron_mouse_pancreas": ("cell_type1", "mouse"),
}
LOGNORM_TARGET_SUM = 1e4  # pbmc3k_labeled holds log1p(counts / nCount_RNA x 1e4)

# Well-known markers of the blood types (lineage, T, CD4 and CD8 subsets, NK, B, monocytes, DC, platelets,
# progenitors) and housekeeping genes, as targeted immune panels carry them; ``blood_panel`` adds the
# query's most variable genes.
BLOOD_MARKERS = (
    "PTPRC", "ACTB", "GAPDH", "B2M",
    "CD3D", "CD3E", "CD3G", "CD2", "CD5", "CD7", "CD247", "LCK", "ZAP70", "TRAC",
    "CD4", "IL7R", "CCR7", "SELL", "LEF1", "TCF7", "MAL", "CD28", "CD27", "CD40LG", "FOXP3", "IL2RA", "CTLA4",
    "GATA3", "TNFRSF4", "ICOS", "S100A4",
    "CD8A", "CD8B", "GZMK", "GZMH", "GZMA", "CCL5", "CD69",
    "NKG7", "GNLY", "KLRD1", "KLRF1", "KLRB1", "NCAM1", "FCGR3A", "PRF1", "GZMB", "NCR1", "KLRC1",
    "MS4A1", "CD79A", "CD79B", "CD19", "CD22", "BANK1", "PAX5", "CD74", "HLA-DRA", "HLA-DRB1", "HLA-DQA1",
    "TCL1A", "FCER2", "IGHM", "IGHD",
    "CD14", "LYZ", "S100A8", "S100A9", "S100A12", "FCN1", "VCAN", "CSF1R", "CD68", "CST3", "LST1", "FCER1G",
    "MS4A7", "CTSS", "TYROBP", "AIF1",
    "FCER1A", "CLEC10A", "CD1C", "CLEC4C", "LILRA4", "IL3RA", "ITGAX",
    "PPBP", "PF4", "ITGA2B", "GP9",
    "CD34", "KIT", "PROM1",
)


class CrossPair(NamedTuple):
    """One evaluation: a model of study ``reference`` annotates study ``query``, scored through ``tissue``'s
    harmonization table at ``level``; ``held_out`` splits one study by donor, ``panel`` restricts the query
    to a targeted panel of that many genes."""

    name: str
    group: str
    reference: str
    query: str
    tissue: str
    level: str = "shared_type"
    held_out: str | None = None
    panel: int | None = None


_CELLBENCH = {"celseq2": "cellbench_celseq2_3cl", "dropseq": "cellbench_dropseq_3cl",
              "10x": "cellbench_10x_3cl_894genes"}
PAIRS = (
    CrossPair("atlas->pbmc3k", "blood", "zheng2017_sorted_pbmc", "pbmc3k_labeled", "blood"),
    CrossPair("atlas->pbmc3k:panel500", "blood", "zheng2017_sorted_pbmc", "pbmc3k_labeled", "blood", panel=500),
    CrossPair("atlas->pbmc3k:panel200", "blood", "zheng2017_sorted_pbmc", "pbmc3k_labeled", "blood", panel=200),
    CrossPair("atlas->mouse-immune", "blood", "zheng2017_sorted_pbmc", "tabula_muris_immune_mouse", "blood",
              level="lineage"),
    *(CrossPair(f"{ref}->{query}", "cell-lines", _CELLBENCH[ref], _CELLBENCH[query], "cell_lines")
      for ref in _CELLBENCH for query in _CELLBENCH if ref != query),
    CrossPair("pancreas:human->mouse", "pancreas", "baron_human_pancreas", "baron_mouse_pancreas", "pancreas"),
    CrossPair("pancreas:mouse->human", "pancreas", "baron_mouse_pancreas", "baron_human_pancreas", "pancreas"),
    *(CrossPair(f"within:lodo-{donor}", "within-study", "baron_human_pancreas", "baron_human_pancreas", "pancreas",
                held_out=donor) for donor in ("human1", "human2", "human3")),
)


def counts_from_lognorm(X, totals) -> sp.csr_matrix:
    """Raw counts back from log1p(counts / total x 1e4) and each cell's total; refuses values that do not
    come back as integers."""
    X = sp.csr_matrix(X, dtype=np.float64)
    scale = np.repeat(np.asarray(totals, dtype=np.float64) / LOGNORM_TARGET_SUM, np.diff(X.indptr))
    values = np.expm1(X.data) * scale
    if np.abs(values - np.round(values)).max() > 0.05:
        raise ValueError("log-normalised values do not come back as integer counts with these totals")
    return sp.csr_matrix((np.round(values).astype(np.float32), X.indices, X.indptr), shape=X.shape)


@functools.lru_cache(maxsize=None)
def load_study(name: str, data_dir: Path) -> ad.AnnData:
    """A study as raw counts (read once; callers take copies): CellBench's singlets, PBMC 3k's counts."""
    adata = ad.read_h5ad(Path(data_dir) / f"{name}.h5ad")
    if "demuxlet_cls" in adata.obs:
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    if name == "pbmc3k_labeled":
        adata.X = counts_from_lognorm(adata.X, adata.obs["nCount_RNA"])
    return adata


def blood_panel(query: ad.AnnData, size: int) -> np.ndarray:
    """Names of a targeted panel of ``size`` genes the query measures: the ``BLOOD_MARKERS`` it has, then its
    most variable genes (scanpy's "seurat" dispersion on its log-normalised counts; labels are not used)."""
    markers = [gene for gene in BLOOD_MARKERS if gene in query.var_names]
    lognorm = peers.log_normalize(query)
    table = sc.pp.highly_variable_genes(lognorm, flavor="seurat", inplace=False)
    ranked = pd.Series(table["dispersions_norm"].to_numpy(), index=query.var_names).dropna()
    variable = [gene for gene in ranked.sort_values(ascending=False).index if gene not in markers]
    return np.array(markers + variable[: size - len(markers)])


def build(pair: CrossPair, data_dir: Path) -> splits.Pair:
    """The pair's reference and query (copies), the query's own labels as truth, and the query organism
    when it differs from the reference's."""
    reference, query = load_study(pair.reference, data_dir).copy(), load_study(pair.query, data_dir).copy()
    if pair.held_out is not None:
        reference, query = splits.donor_split(reference, pair.held_out)
    if pair.panel is not None:
        query = query[:, blood_panel(query, pair.panel)].copy()
    (ref_key, ref_organism), (query_key, query_organism) = STUDIES[pair.reference], STUDIES[pair.query]
    return splits.Pair(pair.name, reference, ref_key, query, query.obs[query_key].astype(str).to_numpy(),
                       None if query_organism == ref_organism else query_organism)


def harmonization(tissue: str) -> pd.DataFrame:
    """The tissue's harmonization table, indexed by (study, label)."""
    return pd.read_csv(HERE / "harmonization" / f"{tissue}.csv", keep_default_na=False).set_index(["study", "label"])


def to_shared(table: pd.DataFrame, study: str, labels, level: str) -> np.ndarray:
    """``labels`` of ``study`` as shared names at ``level``; "Unassigned" stays; an unlisted label is an error."""
    lookup = table.loc[study, level]
    labels = np.asarray(labels, dtype=str)
    missing = sorted(set(labels) - set(lookup.index) - {UNASSIGNED})
    if missing:
        raise KeyError(f"{study} labels {missing} are not in the harmonization table")
    return np.array([lookup.get(label, label) for label in labels])


def score(truth: np.ndarray, predicted: np.ndarray, reference_types, prediction: accuracy.Prediction):
    """Scores on the known cells, and per-type recall and novel-type tables (shared names throughout)."""
    known = np.isin(truth, list(reference_types))
    flagged = prediction.flagged if prediction.flagged is not None else np.zeros(len(truth), bool)
    unassigned = np.asarray(prediction.labels, dtype=str) == UNASSIGNED
    row = {"accuracy": metrics.accuracy(truth[known], predicted[known]),
           "macro_f1": metrics.macro_f1(truth[known], predicted[known], min_cells=MIN_CELLS),
           "ari": metrics.ari(truth[known], predicted[known]),
           "n_known": int(known.sum()), "n_novel": int((~known).sum()),
           "novel_flagged": int(flagged[~known].sum()), "novel_unassigned": int(unassigned[~known].sum()),
           "known_unassigned": int(unassigned[known].sum())}
    recall = metrics.per_type_recall(truth[known], predicted[known]).to_frame()
    recall["n"] = pd.Series(truth[known]).value_counts()
    recall["in_macro_f1"] = recall["n"] >= MIN_CELLS
    cells = pd.DataFrame({"type": truth, "call": predicted, "flagged": flagged, "unassigned": unassigned})[~known]
    novel = cells.groupby("type").agg(n=("call", "size"), flagged=("flagged", "sum"), unassigned=("unassigned", "sum"),
                                      most_common_call=("call", lambda calls: calls.value_counts().index[0]))
    return row, recall.rename_axis("type").reset_index(), novel.reset_index()


def _provenance_columns(prediction: accuracy.Prediction) -> dict:
    """Fine-tuning iterations, label changes per iteration and genes read, from a transfer's provenance."""
    prov = prediction.provenance
    if prov is None:
        return {}
    return {"n_iter": prov["n_iter"], "converged": prov["converged"],
            "changed": " ".join(f"{share:.4f}" for share in prov["changed"]),
            "network_genes": prov["genes"]["n_overlap"], "context_genes": prov.get("context_genes", 0)}


def write(out: Path, rows: list[dict], recalls: list[pd.DataFrame], novels: list[pd.DataFrame]) -> pd.DataFrame:
    """Write the scores to ``out`` and the recall and novel-type tables beside it; return the scores."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    for frame, path in ((table, out), (pd.concat(recalls, ignore_index=True) if recalls else pd.DataFrame(),
                                       out.with_name(f"{out.stem}_recall.csv")),
                        (pd.concat(novels, ignore_index=True) if novels else pd.DataFrame(),
                         out.with_name(f"{out.stem}_novel.csv"))):
        frame.to_csv(path, index=False)
    return table


def run(pairs: list[CrossPair], seeds: list[int], names: list[str], data_dir: Path, out: Path) -> pd.DataFrame:
    """Every runner on every pair for every seed; the tables are (re)written to ``out`` after each pair, so an
    interrupted run keeps the pairs it finished. Returns the scores."""
    from itclust_hub import ItClustError

    runners = accuracy.make_runners(names, splits.load_orthologs(data_dir), None)
    rows, recalls, novels = [], [], []
    for spec in pairs:
        pair = build(spec, data_dir)
        table = harmonization(spec.tissue)
        truth = to_shared(table, spec.query, pair.truth, spec.level)
        reference_types = set(to_shared(table, spec.reference, pair.reference.obs[pair.label_key].unique(), spec.level))
        for seed in seeds:
            for runner, call in runners.items():
                start = time.perf_counter()
                try:
                    predictions, reused = call(pair, seed)
                except ItClustError as err:  # a refused query: reported, not scored
                    rows.append({"seed": seed, "pair": spec.name, "group": spec.group, "method": "itclust-hub",
                                 "error": str(err)})
                    print(f"seed {seed} {spec.name:<24} {runner:<20} refused: {err}", flush=True)
                    continue
                seconds = round(time.perf_counter() - start, 1)
                for method, prediction in predictions.items():
                    predicted = to_shared(table, spec.reference, prediction.labels, spec.level)
                    row, recall, novel = score(truth, predicted, reference_types, prediction)
                    ids = {"seed": seed, "pair": spec.name, "group": spec.group, "method": method}
                    rows.append({**ids, **row, "seconds": seconds, "reused": reused, **_provenance_columns(prediction)})
                    recalls.append(recall.assign(**ids))
                    novels.append(novel.assign(**ids))
                    iterations = f"  {prediction.provenance['n_iter']} iterations" if prediction.provenance else ""
                    print(f"seed {seed} {spec.name:<24} {method:<20} acc {row['accuracy']:.3f} "
                          f"F1 {row['macro_f1']:.3f} ARI {row['ari']:.3f}"
                          f"{'  (reused)' if reused else f'  {seconds:.0f}s'}{iterations}", flush=True)
        table = write(out, rows, recalls, novels)
    return table


def iterations(table: pd.DataFrame) -> str:
    """Markdown: itclust-hub's fine-tuning iterations per seed and the share of labels changed at each
    iteration (the run stops when it falls under ``tol``), per pair."""
    if "n_iter" not in table:  # a run of the peers only
        return ""
    ours = table[(table["method"] == "itclust-hub") & table["n_iter"].notna()]
    lines = ["| pair | iterations (per seed) | labels changed per iteration (per seed) |", "|---|---|---|"]
    for pair, runs in ours.groupby("pair", sort=False):
        counts = " / ".join(str(int(n)) for n in runs["n_iter"])
        changed = " / ".join(", ".join(f"{float(x):.2%}" for x in str(c).split()) for c in runs["changed"])
        lines.append(f"| {pair} | {counts} | {changed} |")
    return "\n".join(lines) + "\n"


def select(names: list[str] | None) -> list[CrossPair]:
    """The pairs named (or of the groups named), in benchmark order; all when ``names`` is None."""
    if not names:
        return list(PAIRS)
    known = {p.name for p in PAIRS} | {p.group for p in PAIRS}
    unknown = sorted(set(names) - known)
    if unknown:
        raise SystemExit(f"unknown pairs or groups {unknown}; choose among {sorted(known)}")
    return [p for p in PAIRS if p.name in names or p.group in names]


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", help="pair or group names (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=accuracy.RUNNERS, default=list(accuracy.RUNNERS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", type=Path, default=splits.DATA_DIR)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the README's cross-study table")
    args = parser.parse_args(argv)
    pairs = select(args.pairs)
    files = {f"{s}.h5ad" for p in pairs for s in (p.reference, p.query)} | {splits.FILES["orthologs"]}
    missing = sorted(name for name in files if not (args.data_dir / name).exists())
    if missing:
        print(f"skipping the cross-study benchmark: {', '.join(missing)} not found in {args.data_dir}")
        return 0
    accuracy.quiet_peers()

    table = run(pairs, args.seeds, args.methods, args.data_dir, args.out)
    block = readme_table.table(table)
    if len(pairs) == len(PAIRS) and set(args.methods) == set(accuracy.RUNNERS) and not args.no_docs:
        readme_table.write_docs(block, "crossstudy")
    print(block)
    print(iterations(table))
    print(f"wrote {args.out} and its _recall, _novel tables")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
