"""Without the real data the suite says so: one line at the end names the absent files and the variable
that points the tests at them, and under CI (``CI=true``) a missing file fails the run instead."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_without_data(tmp_path, ci: str) -> subprocess.Popen:
    """A pytest run of a test that needs real data, started with ``ITCLUST_HUB_DATA`` pointing at nothing."""
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"ITCLUST_HUB_DATA": str(tmp_path), "CI": ci}
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_io.py",
                             "-k", "test_h5ad"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(run: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = run.communicate(timeout=300)
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def test_absent_data_is_one_line_at_the_end_and_a_failure_under_ci(tmp_path):
    runs = start_without_data(tmp_path, ci=""), start_without_data(tmp_path, ci="true")  # the two at once
    local, ci = map(finished, runs)
    assert local.returncode == 0, local.stdout
    line = [line for line in local.stdout.splitlines() if "real data" in line and "ITCLUST_HUB_DATA" in line]
    assert len(line) == 1 and "pbmc3k_raw_unlabeled.h5ad" in line[0] and str(tmp_path) in line[0], local.stdout
    assert ci.returncode == 1 and "2 errors" in ci.stdout.splitlines()[-1], ci.stdout
    assert "pbmc3k_raw_unlabeled.h5ad" in ci.stdout
