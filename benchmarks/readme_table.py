"""Write the accuracy table of the README and of benchmarks/RESULTS.md from the accuracy benchmark's CSVs.

    python benchmarks/readme_table.py [--csv benchmarks/results/accuracy_itclust.csv
                                             benchmarks/results/accuracy_peers.csv]
                                      [--docs README.md benchmarks/RESULTS.md]

Each cell is accuracy / macro-F1, the mean over the seeds in the CSVs; "best peer" names the peer with the
highest accuracy and the one with the highest macro-F1; itclust-hub is bold where its accuracy and its
macro-F1 are each at least the best of the peers'. The table
replaces the lines between ``<!-- accuracy-table -->`` and ``<!-- /accuracy-table -->`` in each document.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OURS = ("itclust-hub", "itclust-hub source")
PEERS = ("celltypist", "celltypist+mv", "ingest", "logreg")
START, END = "<!-- accuracy-table -->", "<!-- /accuracy-table -->"


def table(scores: pd.DataFrame) -> str:
    """The markdown table of mean accuracy / macro-F1 per pair (rows, benchmark order) and method."""
    means = scores.groupby(["pair", "method"], sort=False)[["accuracy", "macro_f1"]].mean()
    lines = ["| pair | " + " | ".join((*OURS, *PEERS)) + " | best peer |",
             "|---|" + "---|" * (len(OURS) + len(PEERS) + 1)]
    for pair in scores["pair"].unique():
        rows = means.loc[pair]
        peers = rows.reindex(PEERS).dropna()
        best = peers.idxmax()
        cells = []
        for method in (*OURS, *PEERS):
            if method not in rows.index:
                cells.append("-")
                continue
            acc, f1 = rows.loc[method]
            text = f"{acc:.3f} / {f1:.3f}"
            beats = acc >= peers["accuracy"].max() and f1 >= peers["macro_f1"].max()
            cells.append(f"**{text}**" if method == OURS[0] and beats else text)
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {best['accuracy']} / {best['macro_f1']} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines between the table markers replaced by ``block``."""
    if START not in text or END not in text:
        raise SystemExit(f"no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, nargs="+",
                        default=[RESULTS / "accuracy_itclust.csv", RESULTS / "accuracy_peers.csv"])
    parser.add_argument("--docs", type=Path, nargs="+", default=[ROOT / "README.md", RESULTS.parent / "RESULTS.md"])
    args = parser.parse_args(argv)
    block = table(pd.concat([pd.read_csv(path) for path in args.csv], ignore_index=True))
    for doc in args.docs:
        tmp = doc.with_name(f".{doc.name}.tmp")
        tmp.write_text(replace_block(doc.read_text(), block))
        tmp.replace(doc)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
