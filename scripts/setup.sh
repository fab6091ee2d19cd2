#!/usr/bin/env bash
# Create .venv (if absent) and install itclust-hub with its test extras, torch pinned to the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[test]"
