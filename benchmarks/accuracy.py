"""Accuracy benchmark: ItClust-hub and its peers on every evaluation pair of ``splits.py``.

    python benchmarks/accuracy.py [--seeds 0 1 2] [--methods itclust celltypist ingest logreg]
                                  [--out benchmarks/results/accuracy.csv] [--data-dir DIR]

Writes one CSV row per (seed, pair, method) to ``--out``, the mean and standard deviation over seeds as a
markdown table beside it (``.md``), per-type recall (``_recall.csv``) and, for ItClust-hub, accuracy
within probability bins (``_calibration.csv``); prints the summary table.

Scoring: labels of both species are harmonised (``splits.harmonise``); accuracy, macro-F1 and ARI are
computed on the query cells whose true type exists in the reference. Cells of other types are "novel":
the table counts them, how many a method flagged (ItClust-hub: "Unassigned" or a cluster confidence
below 0.5; peers have no such output and flag none), and how many known cells were marked Unassigned.

Peers are deterministic given their inputs (fixed default random states), so a peer result is computed
once per distinct input and reused for other seeds (``reused``); seeds change the fewer-genes subsets
and ItClust-hub's own randomness.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import metrics
import peers
import splits

UNASSIGNED = "Unassigned"
LOW_CONFIDENCE = 0.5
RUNNERS = ("itclust", "celltypist", "ingest", "logreg")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "accuracy.csv"


@dataclass
class Prediction:
    """One method's labels for a query, with what it flags as possibly novel, its confidence and (ItClust-hub)
    the transfer's provenance (iterations, label changes per iteration)."""

    labels: np.ndarray
    flagged: np.ndarray | None = None
    confidence: np.ndarray | None = None
    provenance: dict | None = None


def _fingerprint(*arrays) -> str:
    """A hash of name arrays (cells, genes, labels) that identifies a method's input."""
    digest = hashlib.sha1()
    for values in arrays:
        digest.update("\x1f".join(map(str, values)).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def run_peers(runner: str, pair: splits.Pair, orthologs: pd.DataFrame) -> dict[str, Prediction]:
    """Put the pair on shared genes and run one peer; CellTypist gives two predictions."""
    reference, query = splits.peer_inputs(pair, orthologs)
    labels = reference.obs[pair.label_key].astype(str).to_numpy()
    if runner == "celltypist":
        per_cell, voted = peers.celltypist_predict_both(reference, labels, query)
        return {"celltypist": Prediction(per_cell), "celltypist+mv": Prediction(voted)}
    predict = {"ingest": peers.ingest_predict, "logreg": peers.logreg_predict}[runner]
    return {runner: Prediction(predict(reference, labels, query))}


class ItClustRunner:
    """Trains one ItClust-hub reference per (reference, seed), kept for the pairs that share it.

    Types with fewer cells than ``train_reference`` accepts are dropped from its training (a reference
    donor pair can hold a single t_cell); their query cells still count as known, so as errors.
    """

    def __init__(self, n_top_genes: int | None = None):
        import itclust_hub

        if not hasattr(itclust_hub, "train_reference"):
            raise ImportError("itclust_hub has no train_reference yet")
        self._ih = itclust_hub
        self._recipe = None if n_top_genes is None else itclust_hub.Recipe(n_top_genes=n_top_genes)
        self._models = {}

    def __call__(self, pair: splits.Pair, seed: int) -> dict[str, Prediction]:
        """Transfer the query; return fine-tuned labels, the same named without the confidence rule (rule 3
        of ``name_clusters``: ``min_confidence=0``), their nearest reference type, and the source network's
        direct prediction."""
        ref_labels = pair.reference.obs[pair.label_key]
        key = (_fingerprint(pair.reference.obs_names, pair.reference.var_names, ref_labels), seed)
        if key not in self._models:
            organism = splits.reference_organism(pair)
            self._models[key] = self._ih.train_reference(
                pair.reference, label_key=pair.label_key, name="bench", seed=seed, progress=False,
                small_types="drop", recipe=self._recipe, **({"organism": organism} if organism else {}))
        result = self._models[key].transfer(pair.query, query_organism=pair.query_organism, seed=seed,
                                            progress=False)
        obs = result.obs
        labels = result.labels.reindex(pair.query.obs_names).astype(str).to_numpy()
        low = obs["cluster_confidence"].to_numpy() < LOW_CONFIDENCE
        return {
            "itclust-hub": Prediction(labels, flagged=(labels == UNASSIGNED) | low,
                                      confidence=obs["probability"].to_numpy(), provenance=result.provenance),
            "itclust-hub without rule 3": Prediction(self._ih.name_clusters(result, min_confidence=0).labels.reindex(
                pair.query.obs_names).astype(str).to_numpy()),
            "itclust-hub nearest": Prediction(obs["nearest_label"].astype(str).to_numpy(), flagged=low),
            "itclust-hub source": Prediction(obs["source_label"].astype(str).to_numpy()),
        }


def score(pair: splits.Pair, prediction: Prediction) -> tuple[dict, pd.Series, pd.DataFrame | None]:
    """Scores on the known-type cells, novel-cell counts, per-type recall and (if any) calibration."""
    truth = splits.harmonise(pair.truth)
    predicted = splits.harmonise(prediction.labels)
    known = np.isin(truth, splits.harmonise(pair.reference.obs[pair.label_key].unique()))
    flagged = prediction.flagged if prediction.flagged is not None else np.zeros(len(truth), bool)
    unassigned = prediction.labels == UNASSIGNED
    row = {**metrics.label_scores(truth[known], predicted[known]),
           "n_known": int(known.sum()), "n_novel": int((~known).sum()),
           "novel_flagged": int(flagged[~known].sum()), "novel_unassigned": int(unassigned[~known].sum()),
           "known_unassigned": int(unassigned[known].sum())}
    recall = metrics.per_type_recall(truth[known], predicted[known])
    calibration = None
    if prediction.confidence is not None:
        correct = truth[known] == predicted[known]
        row["ece"] = metrics.expected_calibration_error(correct, prediction.confidence[known])
        calibration = metrics.calibration(correct, prediction.confidence[known])
    return row, recall, calibration


def make_runners(names: list[str], orthologs: pd.DataFrame, n_top_genes: int | None) -> dict:
    """Callables ``(pair, seed) -> (predictions, reused)`` for the requested runners."""
    runners, cache = {}, {}
    if "itclust" in names:
        try:
            itclust = ItClustRunner(n_top_genes)
            runners["itclust"] = lambda pair, seed: (itclust(pair, seed), False)
        except ImportError as err:
            print(f"skipping itclust-hub: the API this benchmark codes against is not importable ({err})")

    def peer(name):
        def run(pair, seed):
            key = (name, _fingerprint(pair.reference.obs_names, pair.reference.var_names,
                                      pair.reference.obs[pair.label_key], pair.query.obs_names,
                                      pair.query.var_names))
            reused = key in cache
            if not reused:
                cache[key] = run_peers(name, pair, orthologs)
            return cache[key], reused
        return run

    runners.update({name: peer(name) for name in names if name != "itclust"})
    return runners


def run(seeds: list[int], names: list[str], data: splits.BaronData,
        n_top_genes: int | None = None) -> tuple[pd.DataFrame, ...]:
    """Every runner on every pair for every seed; returns (scores, recall, calibration) tables.
    ``n_top_genes`` overrides the length of the itclust-hub references' gene list (None: the default recipe's)."""
    runners = make_runners(names, data.orthologs, n_top_genes)
    rows, recalls, calibrations = [], [], []
    for seed in seeds:
        for pair in splits.evaluation_pairs(data, seed):
            for runner, call in runners.items():
                start = time.perf_counter()
                predictions, reused = call(pair, seed)
                seconds = round(time.perf_counter() - start, 1)
                for method, prediction in predictions.items():
                    row, recall, calibration = score(pair, prediction)
                    ids = {"seed": seed, "pair": pair.name, "method": method}
                    rows.append({**ids, **row, "seconds": seconds, "reused": reused})
                    recalls.append(recall.reset_index().assign(**ids))
                    if calibration is not None:
                        calibrations.append(calibration.assign(**ids))
                    print(f"seed {seed} {pair.name:<20} {method:<20} acc {row['accuracy']:.3f} "
                          f"F1 {row['macro_f1']:.3f} ARI {row['ari']:.3f}"
                          f"{'  (reused)' if reused else f'  {seconds:.0f}s'}",
                          flush=True)
    frames = [pd.DataFrame(rows), pd.concat(recalls, ignore_index=True) if recalls else pd.DataFrame(),
              pd.concat(calibrations, ignore_index=True) if calibrations else pd.DataFrame()]
    return tuple(frames)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per pair and method, pairs in benchmark order.

    ``runs`` counts the distinct computations behind a row (a reused peer result is not a new run).
    """
    grouped = table.groupby(["pair", "method"], sort=False)
    out = grouped[["accuracy", "macro_f1", "ari"]].agg(["mean", "std"])
    out.columns = [f"{metric}_{stat}" for metric, stat in out.columns]
    counts = grouped[["n_known", "n_novel", "novel_flagged", "known_unassigned"]].mean()
    runs = grouped["reused"].agg(lambda reused: int((~reused).sum())).rename("runs")
    return out.join(counts).join(runs).reset_index()


def markdown(summary_table: pd.DataFrame) -> str:
    """Summary as a markdown table: accuracy / macro-F1 / ARI (mean ± sd where there was more than one
    run) and novel-cell counts (means over seeds)."""
    def cell(row, metric):
        spread = f" ± {row[f'{metric}_std']:.3f}" if row["runs"] > 1 else ""
        return f"{row[f'{metric}_mean']:.3f}{spread}"

    lines = ["| pair | method | accuracy | macro-F1 | ARI | known cells | novel cells | novel flagged "
             "| known Unassigned |", "|---|---|---|---|---|---|---|---|---|"]
    for _, row in summary_table.iterrows():
        lines.append(f"| {row['pair']} | {row['method']} | {cell(row, 'accuracy')} | {cell(row, 'macro_f1')}"
                     f" | {cell(row, 'ari')} | {row['n_known']:.0f} | {row['n_novel']:.0f} "
                     f"| {row['novel_flagged']:.1f} | {row['known_unassigned']:.1f} |")
    return "\n".join(lines) + "\n"


def quiet_peers() -> None:
    """Silence the peers' progress logs and their libraries' deprecation warnings."""
    logging.getLogger("celltypist").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="n_jobs value .* overridden")


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", type=Path, default=splits.DATA_DIR)
    parser.add_argument("--n-top-genes", type=int, help="itclust-hub references' gene list length (default: the recipe's)")
    args = parser.parse_args(argv)
    missing = splits.missing_files(args.data_dir)
    if missing:
        print(f"skipping the accuracy benchmark: {', '.join(missing)} not found in {args.data_dir}")
        return 0
    quiet_peers()

    table, recall, calibration = run(args.seeds, args.methods, splits.load_baron(args.data_dir), args.n_top_genes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    recall.to_csv(args.out.with_name(f"{args.out.stem}_recall.csv"), index=False)
    if not calibration.empty:
        calibration.to_csv(args.out.with_name(f"{args.out.stem}_calibration.csv"), index=False)
    text = markdown(summary(table))
    args.out.with_suffix(".md").write_text(
        f"Seeds {' '.join(map(str, args.seeds))}; scored on cells whose type is in the reference.\n\n{text}")
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
