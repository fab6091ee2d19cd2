"""Training a reference on an atlas of 10k, 100k or 1M real cells: time, peak memory and accuracy.

Atlases: Baron human pancreas cells of donors human1 and human2 resampled with replacement, each cell's UMI
counts binomially thinned to 25-100% (``scaling.make_query``), written once to ``--workdir`` and opened
backed (``anndata.read_h5ad(path, backed="r")``), as a lab's atlas on disk. Every reference is scored on two
queries it never saw: donor human3 (held out: other cells of the same study) and the Baron mouse cells
through the ortholog table (cross-species); accuracy and macro-F1 of its labels on the query cells of types
it knows (``accuracy.score``; Unassigned counts as wrong). The yardstick is the 10k atlas, which trains with
the schedule of every atlas under ``LARGE_ATLAS`` cells (epochs over every cell: today's schedule).

Rows (each in a fresh process; the parent polls the resident memory of the process tree):

- ``schedule=default``: ``train_reference``'s defaults (from ``LARGE_ATLAS`` cells: cells-counted epochs
  over chunked reads); ``--today N`` adds a row for atlas size N trained with the schedule of small atlases
  (``LARGE_ATLAS`` raised above N), timed in the same run, for the ratio.
- ``processes=2`` (``--processes 2``, for the sizes in ``--ddp-sizes``): the command a lab runs,
  ``itclust-hub train ATLAS ... --processes 2`` (DistributedDataParallel, gloo, ``--threads`` shared between
  the processes), against one process with ``--threads`` threads. The data-parallel row's time is the whole
  command (start, reading, training, saving: ``wall_seconds``), the single-process row's the
  ``train_reference`` call (``seconds``), so the ratio is, if anything, unfavourable to the data-parallel one.

Each single-process row also records the convergence curve (``--curve-csv``): the pretraining loss (MSE)
averaged over each tenth of every stage, and the validation loss after every supervised epoch.

Needs the benchmark extra (``pip install -e ".[bench]"``: psutil). Run from the project root::

    .venv/bin/python benchmarks/training_scale.py --sizes 10000 100000 --today 100000 --processes 2
    nohup .venv/bin/python benchmarks/training_scale.py --sizes 1000000 --csv training_scale_1m.csv &
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

import accuracy
import scaling
import splits

ROOT = Path(__file__).resolve().parents[1]
LABEL_KEY = splits.LABEL_KEY
ATLAS_DONORS = ("human1", "human2")
HELD_OUT = "human3"


def make_atlas(n_cells: int, workdir: Path, seed: int = 0) -> Path:
    """An ``n_cells`` atlas resampled from the Baron cells of ``ATLAS_DONORS`` (written once, then reused)."""
    path = workdir / f"baron-{'-'.join(ATLAS_DONORS)}-resampled-{n_cells}-seed{seed}.h5ad"
    source = workdir / f"baron-{'-'.join(ATLAS_DONORS)}.h5ad"
    if not source.exists():
        human = splits.load_baron().human
        human[human.obs[splits.DONOR_KEY].isin(ATLAS_DONORS)].copy().write_h5ad(source)
    with mock.patch.object(scaling, "DATA", source):  # make_query resamples the cells of scaling.DATA
        return scaling.make_query(n_cells, path, seed=seed)


def queries():
    """``splits.Pair``s of the held-out donor and the mouse cells, against the atlas donors' types."""
    data = splits.load_baron()
    reference, held_out = splits.donor_split(data.human, HELD_OUT)
    return [splits.Pair(f"held-out:{HELD_OUT}", reference, LABEL_KEY, held_out,
                        held_out.obs[LABEL_KEY].astype(str).to_numpy(), None),
            splits.Pair("cross-species:mouse", reference, LABEL_KEY, data.mouse,
                        data.mouse.obs[LABEL_KEY].astype(str).to_numpy(), "mouse")]


def scores(model) -> dict:
    """Accuracy and macro-F1 of ``model``'s labels on each query."""
    out = {}
    for pair in queries():
        result = model.transfer(pair.query, query_organism=pair.query_organism, seed=0, progress=False)
        labels = result.labels.reindex(pair.query.obs_names).astype(str).to_numpy()
        row = accuracy.score(pair, accuracy.Prediction(labels))[0]
        out[f"{pair.name} accuracy"], out[f"{pair.name} macro_f1"] = row["accuracy"], row["macro_f1"]
    return out


# --- one measurement per process --------------------------------------------------------------------

class Curve:
    """Records the pretraining loss of every minibatch (by stage) and the validation loss of every epoch."""

    def __init__(self):
        import torch

        from itclust_hub import _train

        self.stages, self.validation, self.start = [], [], time.perf_counter()
        mse, validation, sgd = torch.nn.functional.mse_loss, _train._validation_loss, torch.optim.SGD
        curve = self

        def recorded_mse(*args, **kwargs):
            loss = mse(*args, **kwargs)
            curve.stages[-1].append(float(loss))
            return loss

        def recorded_validation(*args, **kwargs):
            curve.validation.append(validation(*args, **kwargs))
            curve.reached(f"supervised epoch {len(curve.validation)}")
            return curve.validation[-1]

        class StageSGD(sgd):  # pretraining makes one optimizer per stage
            def __init__(self, *args, **kwargs):
                curve.reached(f"pretraining stage {len(curve.stages) + 1}")
                curve.stages.append([])
                super().__init__(*args, **kwargs)

        self.patches = [mock.patch.object(torch.nn.functional, "mse_loss", recorded_mse),
                        mock.patch.object(_train, "_validation_loss", recorded_validation),
                        mock.patch.object(torch.optim, "SGD", StageSGD)]
        for patch in self.patches:
            patch.start()

    def reached(self, what: str) -> None:
        """Print how far training got (the parent keeps the last line of a run it had to stop)."""
        print("REACHED " + json.dumps({"reached": what, "after_seconds": round(time.perf_counter() - self.start, 1)}),
              flush=True)

    def rows(self) -> list[dict]:
        """Mean pretraining loss per tenth of each stage; validation loss per epoch."""
        rows = []
        for stage, losses in enumerate(self.stages):
            for tenth, part in enumerate(np.array_split(np.asarray(losses), 10), start=1):
                rows.append({"phase": "pretraining", "stage": stage, "step": tenth, "loss": float(part.mean())})
        rows += [{"phase": "supervised", "stage": "", "step": epoch, "loss": loss}
                 for epoch, loss in enumerate(self.validation, start=1)]
        return rows


def worker(args) -> None:
    """Train on one atlas in this (fresh) process, score the reference and print one JSON line."""
    import anndata as ad
    import torch

    import itclust_hub as ih
    from itclust_hub import _train

    torch.set_num_threads(args.threads)
    if args.schedule == "today":
        _train.LARGE_ATLAS = 2**62  # every atlas trains as one under LARGE_ATLAS cells does
    adata = ad.read_h5ad(args.atlas, backed="r")
    curve = Curve()
    start = time.perf_counter()
    model = ih.train_reference(adata, LABEL_KEY, "scale", organism="human", small_types="drop", seed=0,
                               progress=args.progress)
    out = {"seconds": time.perf_counter() - start, "peak_rss": scaling._peak(), "threads": torch.get_num_threads(),
           "epochs_run": model.config.training["epochs_run"], "hidden_dims": list(model.config.architecture.hidden_dims)}
    model.save_pretrained(args.reference, force=True)
    out.update(scores(model), curve=curve.rows())
    print("RESULT " + json.dumps(out), flush=True)


def score_worker(args) -> None:
    """Score a saved reference (one trained by torchrun) and print one JSON line."""
    import itclust_hub as ih

    model = ih.ItClust.from_pretrained(args.reference)
    print("RESULT " + json.dumps({"epochs_run": model.config.training["epochs_run"],
                                  "hidden_dims": list(model.config.architecture.hidden_dims), **scores(model)}),
          flush=True)


def run(cmd: list[str], log: Path, args, env: dict | None = None, prints_result: bool = True) -> dict:
    """``scaling.run_worker`` with this run's memory cap and timeout; stderr (progress bars) to ``log``."""
    return scaling.run_worker(cmd, mem_cap_gb=args.mem_cap_gb, timeout=args.timeout, env=env, log=log,
                              prints_result=prints_result)


def measure(n_cells: int, atlas: Path, schedule: str, processes: int, args) -> dict:
    """Train (and score) one reference on ``atlas``."""
    reference = args.workdir / f"reference-{n_cells}-{schedule}-{processes}p"
    if processes == 1:
        cmd = [sys.executable, __file__, "_worker", str(atlas), str(reference), "--schedule", schedule,
               "--threads", str(args.threads)] + (["--progress"] if args.progress else [])
        row = run(cmd, reference.with_suffix(".log"), args)
    else:
        cmd = [str(Path(sys.executable).with_name("itclust-hub")), "train", str(atlas), "--label-key", LABEL_KEY,
               "--name", "scale", "--organism", "human", "--small-types", "drop", "-o", str(reference), "--force",
               "--processes", str(processes)]
        row = run(cmd, reference.with_suffix(".log"), args, env={"OMP_NUM_THREADS": str(max(args.threads // processes, 1))},
                  prints_result=False)
        if row["status"] == "ok":
            scored = run([sys.executable, __file__, "_score", str(reference)], reference.with_suffix(".score.log"), args)
            row.update({k: v for k, v in scored.items() if k not in ("status", "wall_seconds", "polled_peak_rss")})
    return {"n_cells": n_cells, "schedule": schedule, "processes": processes, **row}


# --- main -------------------------------------------------------------------------------------------

FIELDS = ["n_cells", "schedule", "processes", "status", "seconds", "wall_seconds", "cells_per_second",
          "peak_rss_gb", "polled_peak_rss_gb", "epochs_run", "hidden_dims", "threads",
          "held-out:human3 accuracy", "held-out:human3 macro_f1", "cross-species:mouse accuracy",
          "cross-species:mouse macro_f1", "reached", "after_seconds", "error"]


def _write(rows: list[dict], args) -> None:
    with open(args.out / args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row = dict(row)
            for key in ("peak_rss", "polled_peak_rss"):
                row[key + "_gb"] = round(row[key] / 2**30, 3) if row.get(key) else ""
            if row.get("seconds"):
                row["cells_per_second"] = round(row["n_cells"] / row["seconds"])
            for key in FIELDS:
                if isinstance(row.get(key), float):
                    row[key] = round(row[key], 4 if "accuracy" in key or "f1" in key else 1)
            writer.writerow(row)
    with open(args.out / args.curve_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["n_cells", "schedule", "phase", "stage", "step", "loss"])
        writer.writeheader()
        for row in rows:
            for point in row.get("curve", []):
                writer.writerow({"n_cells": row["n_cells"], "schedule": row["schedule"], **point,
                                 "loss": round(point["loss"], 6)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--today", type=int, nargs="*", default=[],
                        help="sizes also trained with the schedule of small atlases (epochs over every cell)")
    parser.add_argument("--processes", type=int, default=1, help="also train data-parallel on this many processes")
    parser.add_argument("--ddp-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/itclust-training-scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--csv", default="training_scale.csv")
    parser.add_argument("--curve-csv", default=None, help="default: the --csv name with _curve")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mem-cap-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=3 * 3600.0)
    parser.add_argument("--progress", action="store_true",
                        help="training progress bars (cells/s, time left) in WORKDIR/reference-<size>-<schedule>-<n>p.log")
    args = parser.parse_args(argv)
    args.curve_csv = args.curve_csv or args.csv.replace(".csv", "_curve.csv")
    if splits.missing_files():
        sys.exit(f"Baron data absent from {splits.DATA_DIR}: {', '.join(splits.missing_files())}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        atlas = make_atlas(n, args.workdir)
        runs = [("default", 1)] + [("default", args.processes)] * (args.processes > 1 and n in args.ddp_sizes)
        runs += [("today", 1)] * (n in args.today)
        for schedule, processes in runs:
            row = measure(n, atlas, schedule, processes, args)
            rows.append(row)
            _write(rows, args)
            print(f"{n:>9,} {schedule:<8} {processes}p {row['status']:<8} train {row.get('seconds', float('nan')):8.1f} s"
                  f"  wall {row['wall_seconds']:8.1f} s  peak {scaling._gb(row.get('peak_rss') or row['polled_peak_rss'])} GB"
                  f"  epochs {row.get('epochs_run', '-')}  held-out {row.get('held-out:human3 accuracy', float('nan')):.3f}"
                  f"  mouse {row.get('cross-species:mouse accuracy', float('nan')):.3f}  {row.get('error', '')}", flush=True)
    print(f"\nwritten {args.out / args.csv} and {args.out / args.curve_csv}")


def _worker_main(argv) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("atlas")
    parser.add_argument("reference")
    parser.add_argument("--schedule", choices=["default", "today"], default="default")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--progress", action="store_true")
    worker(parser.parse_args(argv))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        _worker_main(sys.argv[2:])
    elif sys.argv[1:2] == ["_score"]:
        score_worker(argparse.Namespace(reference=sys.argv[2]))
    else:
        main()
