"""Write the accuracy tables of the README and of benchmarks/RESULTS.md from the benchmarks' CSVs.

    python benchmarks/readme_table.py [--table accuracy|crossstudy] [--csv CSV ...]
                                      [--docs README.md benchmarks/RESULTS.md]

``--table accuracy`` (default) reads the accuracy benchmark's CSVs (``accuracy_itclust.csv``,
``accuracy_peers.csv``), ``--table crossstudy`` the cross-study benchmark's (``crossstudy.csv``). Each
cell is accuracy / macro-F1, the mean over the seeds in the CSVs ("refused" where itclust-hub refused the
query); "best peer" names the peer with the highest accuracy and the one with the highest macro-F1;
itclust-hub is bold where its accuracy and its macro-F1 are each at least the best of the peers'. The
table replaces the lines between ``<!-- accuracy-table -->`` and ``<!-- /accuracy-table -->`` (cross-study:
``<!-- crossstudy-table -->`` and ``<!-- /crossstudy-table -->``) in each document.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "README.md", RESULTS.parent / "RESULTS.md")
OURS = ("itclust-hub", "itclust-hub source")
PEERS = ("celltypist", "celltypist+mv", "ingest", "logreg")
CSVS = {"accuracy": (RESULTS / "accuracy_itclust.csv", RESULTS / "accuracy_peers.csv"),
        "crossstudy": (RESULTS / "crossstudy.csv",)}


def markers(name: str) -> tuple[str, str]:
    """The comment lines that enclose table ``name`` in a document."""
    return f"<!-- {name}-table -->", f"<!-- /{name}-table -->"


def table(scores: pd.DataFrame) -> str:
    """The markdown table of mean accuracy / macro-F1 per pair (rows, benchmark order) and method."""
    means = scores.groupby(["pair", "method"], sort=False)[["accuracy", "macro_f1"]].mean()
    lines = ["| pair | " + " | ".join((*OURS, *PEERS)) + " | best peer |",
             "|---|" + "---|" * (len(OURS) + len(PEERS) + 1)]
    for pair in scores["pair"].unique():
        rows = means.loc[pair]
        peers = rows.reindex(PEERS).dropna()
        best = peers.idxmax() if len(peers) else pd.Series({"accuracy": "-", "macro_f1": "-"})
        cells = []
        for method in (*OURS, *PEERS):
            if method not in rows.index:
                cells.append("-")
                continue
            acc, f1 = rows.loc[method]
            if pd.isna(acc):
                cells.append("refused")
                continue
            text = f"{acc:.3f} / {f1:.3f}"
            beats = len(peers) and acc >= peers["accuracy"].max() and f1 >= peers["macro_f1"].max()
            cells.append(f"**{text}**" if method == OURS[0] and beats else text)
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {best['accuracy']} / {best['macro_f1']} |")
    return "\n".join(lines)


def replace_block(text: str, block: str, name: str = "accuracy") -> str:
    """``text`` with the lines between table ``name``'s markers replaced by ``block``."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise SystemExit(f"no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}"


def write_docs(block: str, name: str, docs=DOCS) -> None:
    """Replace table ``name`` in each document (atomically: a temporary file renamed over it)."""
    for doc in map(Path, docs):
        tmp = doc.with_name(f".{doc.name}.tmp")
        tmp.write_text(replace_block(doc.read_text(), block, name))
        tmp.replace(doc)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=sorted(CSVS), default="accuracy")
    parser.add_argument("--csv", type=Path, nargs="+", help="the benchmark's CSVs (default: the table's)")
    parser.add_argument("--docs", type=Path, nargs="+", default=list(DOCS))
    args = parser.parse_args(argv)
    block = table(pd.concat([pd.read_csv(path) for path in args.csv or CSVS[args.table]], ignore_index=True))
    write_docs(block, args.table, args.docs)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
