"""Speed and memory of ``ItClust.transfer`` from 10k to 1M cells, with CellTypist's annotate as the yardstick.

Queries are real Baron human pancreas cells (``baron_human_pancreas.h5ad`` in ``splits.DATA_DIR``) resampled
with replacement and made noisy by binomial thinning of their counts (each cell keeps a random 25-100% of its
UMIs), so they stay sparse raw counts with the real genes. Each query is written once to an ``.h5ad`` in
``--workdir`` and reused. Queries below ``--backed-from`` cells are read into memory; larger ones are opened
with ``anndata.read_h5ad(path, backed="r")`` and transferred straight from disk.

Every (size, method) runs in its own fresh Python process, so its peak resident memory is its own: the
process reports its peak (``VmHWM``) and its RSS after reading the query, and the parent polls its RSS and
kills it when it passes ``--mem-cap-gb`` or ``--timeout`` (recorded as ``oom``/``timeout``, not as a crash).
Only the transfer (resp. normalisation + annotate) is timed, not reading the query or loading the model.

Methods:
- ``itclust``: the bundled ``pancreas-human`` reference when ``itclust_hub/references/pancreas-human``
  exists, else one trained on all Baron human cells (``small_types='drop'``), saved under ``--out``.
  Default settings: it stops when fewer than 0.3% of labels change (these resampled queries settle after
  one iteration, being drawn from the reference's own cells).
- ``itclust-5iter``: the same, forced through five full self-training iterations (``fine_tuning={"tol": -1, "max_iter": 5}``),
  the cost of a query that takes longer to settle.
- ``celltypist-ref-genes``: CellTypist trained on the Baron human cells restricted to the ItClust
  reference's genes (the same input width as ItClust: the fair throughput comparison).
- ``celltypist-all-genes``: CellTypist trained on all genes of the Baron human data (its documented use).
  CellTypist 1.7.x needs a shim for scikit-learn >= 1.8 (``LogisticRegression(multi_class=...)`` was
  removed); it lives in this file only.

Run from the project root::

    .venv/bin/python benchmarks/scaling.py                       # 10k, 100k, 1M; table + results/scaling.csv
    .venv/bin/python benchmarks/scaling.py --sizes 10000 100000 --methods itclust
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from splits import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
DATA = DATA_DIR / "baron_human_pancreas.h5ad"
BUNDLED = ROOT / "itclust_hub" / "references" / "pancreas-human"
METHODS = ("itclust", "itclust-5iter", "celltypist-ref-genes", "celltypist-all-genes")
FORCED = {"itclust-5iter": {"fine_tuning": {"tol": -1.0, "max_iter": 5}}}  # five full iterations whatever the convergence
LABEL_KEY = "cell_type1"


# --- queries ----------------------------------------------------------------------------------------

def _thinned(X, rows: np.ndarray, rng: np.random.Generator):
    """Rows of ``X`` (CSR counts) with each cell's counts binomially thinned to a random 25-100%."""
    import scipy.sparse as sp

    block = X[rows]
    keep = rng.uniform(0.25, 1.0, size=len(rows))
    p = np.repeat(keep, np.diff(block.indptr))
    data = rng.binomial(block.data.astype(np.int64), p).astype(np.float32)
    out = sp.csr_matrix((data, block.indices, block.indptr), shape=block.shape)
    out.eliminate_zeros()
    return out


def make_query(n_cells: int, path: Path, seed: int = 0, chunk: int = 50_000) -> Path:
    """Write an ``n_cells`` resampled, thinned Baron human query to ``path`` (sparse CSR, uncompressed)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    if path.exists():
        return path
    base = ad.read_h5ad(DATA)
    X = base.X.tocsr()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, base.n_obs, size=n_cells)
    obs = pd.DataFrame({LABEL_KEY: pd.Categorical(base.obs[LABEL_KEY].astype(str).to_numpy()[picks]),
                        "source_cell": base.obs_names.to_numpy()[picks]},
                       index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    tmp = path.with_suffix(".partial.h5ad")
    ad.AnnData(obs=obs, var=base.var[[]].copy()).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        if "X" in f:
            del f["X"]
        for start in range(0, n_cells, chunk):
            block = _thinned(X, picks[start : start + chunk], rng)
            if start == 0:
                write_elem(f, "X", block)  # resizable: anndata writes sparse with maxshape=(None,)
            else:
                sparse_dataset(f["X"]).append(block)
    os.replace(tmp, path)
    return path


# --- references -------------------------------------------------------------------------------------

def ensure_reference(out: Path) -> Path:
    """The bundled reference folder, or one trained on all Baron human cells and saved under ``out``."""
    if BUNDLED.exists():
        return BUNDLED
    folder = out / "reference-pancreas-human"
    if not (folder / "config.json").exists():
        import anndata as ad

        import itclust_hub as ih

        human = ad.read_h5ad(DATA)
        model = ih.train_reference(human, LABEL_KEY, "pancreas-human", organism="human", tissue="pancreas",
                                   small_types="drop", seed=0, progress=False)
        model.save_pretrained(folder, force=True)
    return folder


from peers import OneVsRestLogisticRegression  # noqa: E402  (CellTypist shim, benchmark only)


def _lognorm(adata):
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def ensure_celltypist(out: Path, reference: Path, which: str) -> Path:
    """A CellTypist model trained on the Baron human cells (all genes, or the reference's genes)."""
    tag = which
    if which == "ref-genes":  # one model per reference gene list
        import hashlib

        tag += "-" + hashlib.sha256((reference / "genes.json").read_bytes()).hexdigest()[:8]
    path = out / f"celltypist-{tag}.pkl"
    if path.exists():
        return path
    import importlib
    from unittest import mock

    import anndata as ad
    import celltypist

    human = ad.read_h5ad(DATA)
    if which == "ref-genes":
        genes = json.loads((reference / "genes.json").read_text())["symbols"]
        upper = {g.upper(): g for g in human.var_names}
        human = human[:, [upper[g.upper()] for g in genes if g.upper() in upper]].copy()
    train = importlib.import_module("celltypist.train")
    with mock.patch.object(train, "LogisticRegression", OneVsRestLogisticRegression):
        model = celltypist.train(_lognorm(human), labels=human.obs[LABEL_KEY].astype(str).to_numpy(), n_jobs=-1)
    model.write(str(path.with_suffix(".partial.pkl")))
    os.replace(path.with_suffix(".partial.pkl"), path)
    return path


# --- one measurement per process --------------------------------------------------------------------

def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    """This process's peak resident memory: ``VmHWM`` where Linux has it, since ``ru_maxrss`` keeps the
    parent's resident size at the fork (a benchmark parent holding 3.8 GB made every run report >= 3.8 GB)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args) -> None:
    """Run one method on one query in this (fresh) process and print one JSON line."""
    import anndata as ad
    import torch

    torch.set_num_threads(args.threads)
    out = {"threads": torch.get_num_threads()}
    if args.method.startswith("itclust"):
        import itclust_hub as ih

        model = ih.ItClust.from_pretrained(args.reference)
        adata = ad.read_h5ad(args.query, backed="r" if args.backed else None)
        truth = adata.obs[LABEL_KEY].astype(str).to_numpy()
        out["rss_loaded"] = _rss()
        profiler = None
        if args.profile_to:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        res = model.transfer(adata, progress=False, **{**json.loads(args.options), **FORCED.get(args.method, {})})
        out["seconds"] = time.perf_counter() - start
        if profiler is not None:
            import pstats

            profiler.disable()
            with open(args.profile_to, "w") as f:
                pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(40)
        nearest = res.obs["nearest_label"].to_numpy().astype(str)
        out.update(n_iter=res.provenance["n_iter"], converged=res.provenance["converged"],
                   accuracy=float(np.mean(nearest == truth)),
                   source_accuracy=float(np.mean(res.obs["source_label"].to_numpy().astype(str) == truth)))
    else:
        import importlib
        from unittest import mock

        import celltypist

        model = celltypist.models.Model.load(args.reference)
        adata = ad.read_h5ad(args.query)
        truth = adata.obs[LABEL_KEY].astype(str).to_numpy()
        out["rss_loaded"] = _rss()
        start = time.perf_counter()
        _lognorm(adata)
        mid = time.perf_counter()
        with mock.patch.object(importlib.import_module("celltypist.train"), "LogisticRegression", OneVsRestLogisticRegression):
            pred = celltypist.annotate(adata, model=model, majority_voting=False).predicted_labels
        out["seconds"] = time.perf_counter() - start
        out["annotate_seconds"] = time.perf_counter() - mid
        out["accuracy"] = float(np.mean(pred["predicted_labels"].astype(str).to_numpy() == truth))
    out["peak_rss"] = _peak()
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(cmd: list[str], *, mem_cap_gb: float, timeout: float, env: dict | None = None,
               log: Path | None = None, prints_result: bool = True) -> dict:
    """Run a worker command that prints ``RESULT {json}`` (and, as it goes, ``REACHED {json}``) lines,
    polling the summed resident memory of its process tree, killing it past ``mem_cap_gb`` or ``timeout``
    seconds; its stderr goes to ``log`` (a file) when given. Returns the status, the wall time, the polled
    peak, and the last RESULT (else the last REACHED and, on a failure, stderr's last line). A command that
    prints no RESULT (``prints_result=False``: a command line of the product) succeeds by its exit status."""
    import psutil

    stderr_file = open(log, "w") if log is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                                env={**os.environ, **(env or {})})
    finally:
        if log is not None:
            stderr_file.close()
    tree = psutil.Process(proc.pid)
    polled, status, start = 0, "ok", time.perf_counter()
    while proc.poll() is None:
        try:
            polled = max(polled, sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)]))
        except psutil.Error:
            pass
        if polled > mem_cap_gb * 2**30:
            status = "oom"
        elif time.perf_counter() - start > timeout:
            status = "timeout"
        if status != "ok":
            for p in [*tree.children(recursive=True), tree]:
                p.kill()
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    stderr = log.read_text() if log is not None else stderr
    row = {"status": status, "wall_seconds": time.perf_counter() - start, "polled_peak_rss": polled}
    found = {tag: [line[len(tag) + 1:] for line in stdout.splitlines() if line.startswith(tag + " ")]
             for tag in ("REACHED", "RESULT")}
    for tag in ("REACHED", "RESULT"):
        if found[tag]:
            row.update(json.loads(found[tag][-1]))
    failed = proc.returncode != 0 or (prints_result and not found["RESULT"])
    if failed and status == "ok":
        row["status"] = "error"
        row["error"] = (stderr.strip().splitlines() or ["?"])[-1][:300]
    return row


def measure(method: str, query: Path, reference: Path, backed: bool, args) -> dict:
    """Run ``worker`` in a subprocess (``run_worker``)."""
    cmd = [sys.executable, __file__, "_worker", "--method", method, "--query", str(query),
           "--reference", str(reference), "--threads", str(args.threads), "--options", args.options]
    if backed:
        cmd.append("--backed")
    if args.profile and method.startswith("itclust"):
        mode = "backed" if backed else "memory"
        cmd += ["--profile-to", str(args.out / f"profile-{method}-{query.stem.split('-')[2]}-{mode}.txt")]
    env = {}
    if args.code is not None:  # e.g. a git worktree of an older commit, for before/after numbers
        env["PYTHONPATH"] = os.pathsep.join([str(args.code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"method": method, **run_worker(cmd, mem_cap_gb=args.mem_cap_gb, timeout=args.timeout, env=env)}


def repeated(method: str, query: Path, reference: Path, backed: bool, args) -> dict:
    """``measure`` ``args.repeat`` times (once if the first run fails): median time, largest peak."""
    rows = [measure(method, query, reference, backed, args)]
    while rows[0]["status"] == "ok" and len(rows) < args.repeat:
        rows.append(measure(method, query, reference, backed, args))
    ok = [r for r in rows if r["status"] == "ok"]
    if len(ok) < len(rows) or not ok:
        return rows[0] if not ok else {**ok[0], "status": "flaky"}
    row = dict(sorted(ok, key=lambda r: r["seconds"])[len(ok) // 2])
    row["all_seconds"] = [round(r["seconds"], 2) for r in ok]
    for key in ("peak_rss", "polled_peak_rss"):
        row[key] = max(r.get(key) or 0 for r in ok)
    return row


# --- main -------------------------------------------------------------------------------------------

def _gb(x) -> str:
    return f"{x / 2**30:.2f}" if x else "-"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backed-from", type=int, default=1_000_000,
                        help="queries of at least this many cells are transferred in backed mode")
    parser.add_argument("--also-backed", type=int, nargs="*", default=[],
                        help="sizes to transfer a second time in backed mode (itclust only)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/itclust-scaling"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mem-cap-gb", type=float, default=12.0,
                        help="kill a run whose resident memory passes this (recorded as oom)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--options", default="{}", help="JSON keyword arguments for ItClust.transfer")
    parser.add_argument("--csv", default="scaling.csv")
    parser.add_argument("--code", type=Path, default=None,
                        help="import itclust_hub from this folder (e.g. a worktree of an older commit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile each itclust transfer into OUT/profile-<method>-<cells>-<mode>.txt")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (size, method); the median time is kept")
    args = parser.parse_args(argv)
    if not DATA.exists():
        sys.exit(f"the Baron human data {DATA} is absent")
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference = ensure_reference(args.out)
    refs = {"itclust": reference, "itclust-5iter": reference}
    for m in args.methods:
        if m.startswith("celltypist"):
            refs[m] = ensure_celltypist(args.out, reference, m[len("celltypist-"):])
    rows = []
    for n in args.sizes:
        query = make_query(n, args.workdir / f"baron-resampled-{n}-seed{args.seed}.h5ad", seed=args.seed)
        runs = [(m, m.startswith("itclust") and n >= args.backed_from) for m in args.methods]
        if n in args.also_backed and n < args.backed_from:
            runs += [(m, True) for m in args.methods if m.startswith("itclust")]
        for method, backed in runs:
            row = {"n_cells": n, "backed": backed, "reference": refs[method].name,
                   **repeated(method, query, refs[method], backed, args)}
            rows.append(row)
            if row.get("error"):
                print(f"{method} failed on {n} cells: {row['error']}", flush=True)
            print(f"{n:>9,} {method:<22} {'backed' if backed else 'memory':<7} {row['status']:<8} "
                  f"{row.get('seconds', float('nan')):8.1f} s  peak {_gb(row.get('peak_rss') or row['polled_peak_rss'])} GB"
                  f"  (after reading query {_gb(row.get('rss_loaded'))} GB)  iter {row.get('n_iter', '-')}"
                  f"  acc {row.get('accuracy', float('nan')):.3f}", flush=True)
    for row in rows:
        base = [r for r in rows if r["n_cells"] == row["n_cells"] and r["method"] == "celltypist-ref-genes"
                and r["status"] == "ok"]
        if row["status"] == "ok" and base:
            row["time_vs_celltypist_ref_genes"] = row["seconds"] / base[0]["seconds"]
    fields = ["n_cells", "method", "backed", "status", "seconds", "annotate_seconds", "cells_per_second",
              "time_vs_celltypist_ref_genes", "peak_rss_gb", "rss_loaded_gb", "polled_peak_rss_gb", "n_iter",
              "converged", "accuracy", "source_accuracy", "threads", "all_seconds", "reference"]
    with open(args.out / args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row = dict(row)
            for key in ("peak_rss", "rss_loaded", "polled_peak_rss"):
                row[key + "_gb"] = round(row[key] / 2**30, 3) if row.get(key) else ""
            for key in ("time_vs_celltypist_ref_genes", "annotate_seconds"):
                if row.get(key):
                    row[key] = round(row[key], 3)
            if row.get("seconds"):
                row["cells_per_second"] = round(row["n_cells"] / row["seconds"])
                row["seconds"] = round(row["seconds"], 2)
            writer.writerow(row)
    print()
    print(f"{'cells':>9} {'method':<22} {'mode':<7} {'status':<8} {'seconds':>8} {'cells/s':>9} "
          f"{'x celltypist':>12} {'peak GB':>8} {'iter':>5} {'accuracy':>8}")
    for row in rows:
        secs = row.get("seconds")
        print(f"{row['n_cells']:>9,} {row['method']:<22} {'backed' if row['backed'] else 'memory':<7} "
              f"{row['status']:<8} {secs or float('nan'):8.1f} {row['n_cells'] / secs if secs else float('nan'):9,.0f} "
              f"{row.get('time_vs_celltypist_ref_genes', float('nan')):12.2f} "
              f"{_gb(row.get('peak_rss') or row['polled_peak_rss']):>8} {row.get('n_iter', '-')!s:>5} "
              f"{row.get('accuracy', float('nan')):8.3f}")
    print(f"\nwritten {args.out / args.csv}")


def _worker_main(argv) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--backed", action="store_true")
    parser.add_argument("--profile-to", default=None)
    worker(parser.parse_args(argv))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        _worker_main(sys.argv[2:])
    else:
        main()
