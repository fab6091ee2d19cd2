"""Novel types: does a reference flag the query cells whose type it lacks, and keep the cells it knows?

    python benchmarks/novelty.py [--seeds 0 1 2] [--pairs NAME ...] [--out benchmarks/results/novelty.csv]
                                 [--no-docs]

Pairs (each query holds cell types its reference lacks; ``PAIRS``):
- Baron pancreas without ductal, and without acinar, -> the donor with most of them (``splits.novel_type_pairs``);
- the blood atlas of sorted populations -> PBMC 3k (DC and platelets: another 10x study), and -> Tabula Muris
  mouse immune cells (granulocytes: another species, through orthologs), scored as in ``crossstudy.py``;
- CellBench's five CEL-seq2 cell lines: a reference of plates 1-2 without one line, the query plate 3 with
  all five, each line left out in turn.

Per pair and seed: the share of novel cells flagged (labelled "Unassigned"), the share of known cells flagged,
and the known cells' accuracy with and without the naming step's novel-population rule (rule 4 of
``itclust_hub.name_clusters``: the query's own clusters no reference type matches) and without its
confidence rule (rule 3: few of a cluster's cells started as its type; ``min_confidence=0``). Peers, trained on the
reference over the genes both sides share: CellTypist's own threshold (``mode="prob match"``, p >= 0.5:
"Unassigned" when no type reaches it); scanpy ``ingest`` and logistic regression have no such output and
flag nothing. Writes one row per (seed, pair, method) to ``--out``, a markdown table beside it, and the
README's and RESULTS.md's novel-type table (unless ``--no-docs`` or only some pairs or seeds ran).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

import accuracy
import crossstudy
import peers
import readme_table
import splits

UNASSIGNED = "Unassigned"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "novelty.csv"
CELLBENCH_FIVE = "cellbench_celseq2_5cl"
QUERY_PLATE = "sc_celseq2_5cl_p3"


class NovelPair(NamedTuple):
    """A pair and how its labels are compared: ``shared`` maps a study's labels to shared names."""

    pair: splits.Pair
    shared_reference: Callable
    shared_query: Callable


def _crossstudy(name: str, data_dir: Path) -> NovelPair:
    spec = next(p for p in crossstudy.PAIRS if p.name == name)
    table = crossstudy.harmonization(spec.tissue)
    return NovelPair(crossstudy.build(spec, data_dir),
                     lambda labels: crossstudy.to_shared(table, spec.reference, labels, spec.level),
                     lambda labels: crossstudy.to_shared(table, spec.query, labels, spec.level))


def _cellbench_left_out(line: str, data_dir: Path) -> NovelPair:
    five = crossstudy.load_study(CELLBENCH_FIVE, data_dir)
    plate = five.obs["batch"] == QUERY_PLATE
    reference = five[~plate & (five.obs["cell_type"] != line)].copy()
    query = five[plate].copy()
    same = lambda labels: np.asarray(labels, dtype=str)  # noqa: E731
    return NovelPair(splits.Pair(f"cellbench-5cl:without-{line}", reference, "cell_type", query,
                                 query.obs["cell_type"].astype(str).to_numpy(), None), same, same)


def _baron(cell_type: str, data_dir: Path) -> NovelPair:
    pair = next(p for p in splits.novel_type_pairs(splits.load_baron(data_dir)) if p.name.startswith(f"novel-{cell_type}"))
    return NovelPair(pair, splits.harmonise, splits.harmonise)


PAIRS: dict[str, Callable[[Path], NovelPair]] = {
    "baron:without-ductal": lambda d: _baron("ductal", d),
    "baron:without-acinar": lambda d: _baron("acinar", d),
    "atlas->pbmc3k": lambda d: _crossstudy("atlas->pbmc3k", d),
    "atlas->mouse-immune": lambda d: _crossstudy("atlas->mouse-immune", d),
    **{f"cellbench-5cl:without-{line}": (lambda d, line=line: _cellbench_left_out(line, d))
       for line in ("A549", "H1975", "H2228", "H838", "HCC827")},
}


_MODELS: dict = {}  # (reference fingerprint, seed) -> trained reference, for pairs that share a reference


def itclust(pair: splits.Pair, seed: int) -> dict[str, np.ndarray]:
    """Train a reference (once per reference and seed), transfer; the labels, and the labels without the
    novel-population rule (rule 4) or without the confidence rule (rule 3: ``min_confidence=0``)."""
    import itclust_hub as ih

    labels = pair.reference.obs[pair.label_key]
    key = (accuracy._fingerprint(pair.reference.obs_names, pair.reference.var_names, labels), seed)
    if key not in _MODELS:
        organism = splits.reference_organism(pair)
        _MODELS[key] = ih.train_reference(pair.reference, label_key=pair.label_key, name="bench", seed=seed,
                                          progress=False, small_types="drop",
                                          **({"organism": organism} if organism else {}))
    result = _MODELS[key].transfer(pair.query, query_organism=pair.query_organism, seed=seed, progress=False)
    obs = result.obs
    cluster_novel = obs["cluster"].map(result.clusters["novel"]).fillna(True).to_numpy(bool)
    without_rule = np.where(cluster_novel | obs["empty"].to_numpy(bool), UNASSIGNED, obs["nearest_label"].astype(str))
    without_confidence = ih.name_clusters(result, min_confidence=0).obs["label"].astype(str).to_numpy()
    return {"itclust-hub": obs["label"].astype(str).to_numpy(), "itclust-hub without rule 4": without_rule,
            "itclust-hub without rule 3": without_confidence}


def celltypist(pair: splits.Pair, orthologs: pd.DataFrame) -> dict[str, np.ndarray]:
    """CellTypist with its probability threshold, on the genes both sides share."""
    reference, query = splits.peer_inputs(pair, orthologs)
    labels = reference.obs[pair.label_key].astype(str).to_numpy()
    return {"celltypist (p >= 0.5)": peers.celltypist_unassigned(reference, labels, query)}


def _shared(to_shared: Callable, labels) -> np.ndarray:
    """``labels`` (reference names) as shared names; "Unassigned" stays."""
    labels = np.asarray(labels, dtype=object).copy()
    named = labels != UNASSIGNED
    labels[named] = to_shared(labels[named])
    return labels


def score(truth: np.ndarray, predicted: np.ndarray, known: np.ndarray) -> dict:
    """Novel cells flagged, known cells flagged, known cells' accuracy (flagged known cells count as wrong)."""
    flagged = predicted == UNASSIGNED
    return {"n_novel": int((~known).sum()), "n_known": int(known.sum()),
            "novel_flagged": float(flagged[~known].mean()) if (~known).any() else np.nan,
            "known_flagged": float(flagged[known].mean()),
            "known_accuracy": float((predicted[known] == truth[known]).mean())}


def run(names: list[str], seeds: list[int], data_dir: Path, out: Path, with_peers: bool) -> pd.DataFrame:
    """Every pair, every seed; the table is rewritten after each pair."""
    orthologs = splits.load_orthologs(data_dir)
    rows = []
    for name in names:
        novel_pair = PAIRS[name](data_dir)
        pair = novel_pair.pair
        truth = novel_pair.shared_query(pair.truth)
        known = np.isin(truth, list(set(novel_pair.shared_reference(pair.reference.obs[pair.label_key].unique()))))
        calls = []
        if with_peers:
            start = time.perf_counter()
            calls.append((None, celltypist(pair, orthologs), time.perf_counter() - start))
        for seed in seeds:
            start = time.perf_counter()
            calls.append((seed, itclust(pair, seed), time.perf_counter() - start))
        for seed, predictions, seconds in calls:
            for method, labels in predictions.items():
                predicted = _shared(novel_pair.shared_reference, labels)
                row = {"pair": name, "seed": seed, "method": method, **score(truth, predicted, known),
                       "novel_types": ", ".join(sorted(set(truth[~known]))), "seconds": round(seconds, 1)}
                rows.append(row)
                print(f"{name:<30} seed {seed} {method:<28} novel flagged {row['novel_flagged']:.0%} of "
                      f"{row['n_novel']}, known flagged {row['known_flagged']:.1%}, known accuracy "
                      f"{row['known_accuracy']:.3f}", flush=True)
        table = pd.DataFrame(rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    return table


def markdown(table: pd.DataFrame) -> str:
    """Mean over seeds per pair and method: novel flagged, known flagged, known accuracy (with and without
    the novel-population rule)."""
    mean = table.groupby(["pair", "method"], sort=False)[["novel_flagged", "known_flagged", "known_accuracy"]].mean()
    lines = ["| pair | novel cells | method | novel flagged | known flagged | known accuracy |", "|---|---|---|---|---|---|"]
    first = table.drop_duplicates("pair").set_index("pair")
    for (pair, method), row in mean.iterrows():
        lines.append(f"| {pair} | {first.loc[pair, 'n_novel']} ({first.loc[pair, 'novel_types']}) | {method} | "
                     f"{row['novel_flagged']:.0%} | {row['known_flagged']:.1%} | {row['known_accuracy']:.3f} |")
    seeds = sorted(int(s) for s in table["seed"].dropna().unique())
    return "\n".join(lines) + f"\n\nitclust-hub: mean of seeds {', '.join(map(str, seeds))}; CellTypist is deterministic.\n"


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-peers", action="store_true", help="itclust-hub only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", type=Path, default=splits.DATA_DIR)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the README's novel-type table")
    args = parser.parse_args(argv)
    accuracy.quiet_peers()
    table = run(args.pairs, args.seeds, args.data_dir, args.out, not args.no_peers)
    block = markdown(table)
    args.out.with_suffix(".md").write_text(block)
    if not args.no_docs and len(args.pairs) == len(PAIRS) and not args.no_peers:
        readme_table.write_docs(block, "novelty")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
