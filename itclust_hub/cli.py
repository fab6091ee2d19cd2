"""The ``itclust-hub`` command line: list, inspect, download and cache references, annotate a query
file, train, validate and publish a reference.

Bad input ends with exit status 1 (2 for a bad command line) and one line ``Error: ...`` on stderr;
``itclust-hub --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click
import pandas as pd

from ._errors import ItClustError, ItClustWarning, cli_words
from ._genes import normalize_organism
from ._ontology import UNASSIGNED
from ._result import TABLE_FILES

INPUT_TYPES = ("auto", "counts", "lognorm", "tpm")  # kept here so the CLI starts without importing torch
SCALES = ("auto", "reference", "own")
SEED = click.IntRange(0, 2**32 - 1)  # what numpy and torch both take
_DESCRIPTION_WIDTH = 48


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


class _OneLineErrors(click.Group):
    """A click group that reports every failure in one ``Error:`` line unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ItClustError as err:
            if ctx.find_root().params.get("debug"):
                raise
            raise click.ClickException(cli_words(_first_line(err))) from None
        except Exception as err:  # an unexpected failure: still one line, the traceback behind --debug
            if ctx.find_root().params.get("debug"):
                raise
            raise click.ClickException(
                f"{type(err).__name__}: {_first_line(err)} (run `itclust-hub --debug ...` for the traceback)") from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the CLI; click's own errors (usage, missing files) are also printed as one line; a group
        without a command prints its help; the library's logged warnings are ``Warning:`` lines."""
        handler = _WarningLines()
        logging.getLogger("itclust_hub").addHandler(handler)
        try:
            return self._main(args, prog_name, complete_var, standalone_mode, **extra)
        finally:
            logging.getLogger("itclust_hub").removeHandler(handler)

    def _main(self, args, prog_name, complete_var, standalone_mode, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:  # a group given no command: its help, not an error
            click.echo(err.ctx.get_help())
            sys.exit(0)
        except click.UsageError as err:
            where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
            click.echo(f"Error: {err.format_message()}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"Error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(130)


class _WarningLines(logging.Handler):
    """Shows the library's logged warnings as one ``Warning: ...`` line each on stderr, in CLI words."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {cli_words(record.getMessage())}", err=True)


def _progress(no_progress: bool) -> bool | None:
    """``--no-progress`` turns bars off; otherwise they show only on a terminal."""
    return False if no_progress else None


def _human_size(n_bytes) -> str:
    size, unit = float(n_bytes or 0), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            break
        size /= 1024
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def _print_table(frame: pd.DataFrame) -> None:
    """Print ``frame`` as left-aligned columns, ``-`` for missing values."""
    cells = frame.astype(object).where(frame.notna(), "-").astype(str)
    widths = [max(len(str(column)), int(cells[column].str.len().max())) for column in cells.columns]
    for row in [list(map(str, cells.columns)), *cells.to_numpy().tolist()]:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


@click.group("itclust-hub", cls=_OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="itclust-hub", prog_name="itclust-hub")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
def main(debug: bool) -> None:
    """Pretrained ItClust references for single-cell RNA-seq: annotate a query with a reference
    (`transfer`), find references (`list`, `info`, `download`, `cache`) and contribute your own
    (`train`, `validate`, `push`)."""


@main.command("list")
@click.option("--organism", help="Only references of this organism (e.g. human).")
@click.option("--tissue", help="Only references of this tissue (e.g. pancreas).")
@click.option("--name", "name_pattern", metavar="PATTERN",
              help="Only names matching this wildcard (e.g. 'pancreas-*').")
@click.option("--refresh", is_flag=True, help="Fetch the newest index from the Hub first.")
@click.option("--community", is_flag=True,
              help="Add Hub repos tagged itclust-hub that the index does not list (unverified).")
def list_command(organism, tissue, name_pattern, refresh, community) -> None:
    """List the available references."""
    from ._hub import list_references

    table = list_references(organism=organism, tissue=tissue, name=name_pattern, refresh=refresh,
                            include_community=community)
    if table.empty:
        click.echo("No reference matches; run `itclust-hub list` without filters to see them all.")
        return
    shown = table[["name", "organism", "tissue", "n_cells", "n_cell_types", "n_genes", "version", "cached",
                   "description"]].copy()
    shown["cached"] = shown["cached"].map({True: "yes", False: "no"})
    shown["description"] = shown["description"].map(
        lambda d: d if not isinstance(d, str) or len(d) <= _DESCRIPTION_WIDTH else d[: _DESCRIPTION_WIDTH - 3] + "...")
    _print_table(shown.rename(columns={"n_cells": "cells", "n_cell_types": "types", "n_genes": "genes"}))


@main.command()
@click.argument("name")
@click.option("--revision", help="Branch, tag or commit (like NAME@REVISION).")
@click.option("--no-card", is_flag=True, help="Print the metadata only, not the model card.")
def info(name, revision, no_card) -> None:
    """Show a reference's metadata and model card (NAME: registry name, org/repo[@rev], folder or URL).

    The reference is downloaded into the cache if it is not there yet.
    """
    from ._model import ItClust

    model = ItClust.from_pretrained(name, revision=revision)
    config, source = model.config, model.source
    rows = [
        ("name", model.name), ("version", config.version), ("organism", model.organism),
        ("tissue", config.tissue), ("cells", config.n_cells), ("genes", len(model.genes)),
        ("cell types", f"{len(model.cell_types)}: " + ", ".join(
            f"{t} ({n})" for t, n in zip(model.cell_types, model.type_counts))),
        ("encoder", list(config.architecture.hidden_dims)), ("format version", config.format_version),
        ("source", source.get("source")), ("repo", source.get("repo_id")), ("revision", source.get("revision")),
        ("path", source.get("path")),
    ]
    rows += [(key, value) for key, value in config.metadata.items() if isinstance(value, str)]
    for key, value in rows:
        if value is not None:
            click.echo(f"{key + ':':<16}{value}")
    card = Path(source["path"]) / "README.md"
    if not no_card and card.is_file():
        click.echo("")
        click.echo(_card_body(card.read_text()))


def _card_body(text: str) -> str:
    """A model card without its YAML front matter."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            text = text[end + 4 :]
    return text.strip()


@main.command()
@click.argument("name")
@click.option("--revision", help="Branch, tag or commit (like NAME@REVISION).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Hub cache folder (default: HF_HOME's).")
def download(name, revision, cache_dir) -> None:
    """Download a reference into the cache (for offline use later) and print where it is."""
    from ._hub import resolve_reference

    resolved = resolve_reference(name, revision=revision, cache_dir=cache_dir)
    click.echo(f"{resolved.name}: {resolved.path}")
    click.echo(f"revision: {resolved.revision or 'none (' + resolved.source + ')'}")


def _planned_outputs(out: Path, tables: Path | None, report: Path | None, markers: bool, confusion: bool) -> list[Path]:
    from ._report import report_files

    paths = [out]
    if tables is not None:
        paths += [tables / name for name in TABLE_FILES]
    if report is not None:
        paths += report_files(report, markers=markers, confusion=confusion)
    return paths


def _write_h5ad(adata, path: Path) -> None:
    from ._outputs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def _new_paths(outputs: list[Path]) -> list[Path]:
    """The outputs and the folders above them that do not exist yet, deepest first."""
    new = {path for output in outputs for path in (output, *output.parents) if not path.exists()}
    return sorted(new, key=lambda path: len(path.parts), reverse=True)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@main.command()
@click.argument("name")
@click.argument("query", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Annotated .h5ad to write (the query with itclust_* obs columns, embedding and probabilities).")
@click.option("--format", "fmt", type=click.Choice(["h5ad", "10x-mtx", "10x-h5", "loom", "text"]),
              help="Query file format (default: from the file name; a folder is a 10x matrix folder).")
@click.option("--layer", help="Take expression values from this layer (e.g. counts).")
@click.option("--use-raw", is_flag=True, help="Take expression values from .raw.")
@click.option("--gene-key", help="var column holding gene symbols or Ensembl IDs (default: the best match).")
@click.option("--input-type", type=click.Choice(INPUT_TYPES), default="auto", show_default=True,
              help="What the values are; auto detects raw counts, log-normalised values or TPM.")
@click.option("--query-organism",
              help="Organism of the query, e.g. mouse, 'Mus musculus', mm or 10090 (default: detected from its gene names).")
@click.option("--orthologs", type=click.Path(dir_okay=False), help="CSV ortholog table, one column per organism.")
@click.option("--scale", type=click.Choice(SCALES), default="auto", show_default=True,
              help="Scale genes with the reference's statistics or the query's own (auto: own across species).")
@click.option("--revision", help="Reference branch, tag or commit (like NAME@REVISION).")
@click.option("--level", type=click.Choice(["fine", "coarse"]), default="fine", show_default=True,
              help="Label resolution: the reference's own types, or their coarse parents (e.g. CD4 T).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed of the fine-tuning.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--max-iter", type=click.IntRange(min=1),
              help="Most self-training iterations (default: the reference's, 30 unless it says otherwise).")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Least share of a cluster's cells starting as its type, else it is novel (default: 0.5 for a "
              "query of another organism, off for one of the reference's).")
@click.option("--min-overlap", type=click.FloatRange(0, 1),
              help="Least share of the reference's genes the query must measure (default: 0.02).")
@click.option("--tables", type=click.Path(file_okay=False, path_type=Path),
              help="Also write labels.csv, probabilities.csv and clusters.csv into this folder.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Also write figures (PNG) and summary.md into this folder.")
@click.option("--truth-key", help="obs column with the query's own labels: adds a confusion heatmap to the report.")
@click.option("--force", is_flag=True, help="Overwrite the output files this command writes (nothing else).")
@click.option("--no-progress", is_flag=True, help="No progress bar (bars show only on a terminal anyway).")
def transfer(name, query, out, fmt, layer, use_raw, gene_key, input_type, query_organism, orthologs, scale,
             revision, level, seed, device, max_iter, min_confidence, min_overlap, tables, report, truth_key,
             force, no_progress) -> None:
    """Annotate QUERY with reference NAME and write the annotated OUT.h5ad.

    NAME is a registry name (see `itclust-hub list`), org/repo[@rev], a reference folder or a URL.
    QUERY is an .h5ad, 10x folder or .h5, .loom, or .csv/.tsv/.txt matrix. Nothing is overwritten
    without --force, and --force replaces only the files this command writes.
    """
    from ._io import read_query
    from ._model import ItClust
    from ._outputs import check_output_files
    from ._report import gene_overlap_text, input_type_text, label_counts, novel_text, organism_text, scale_text
    from ._report import warnings as report_warnings

    if out.suffix != ".h5ad":
        raise ItClustError(f"-o {out} must end in .h5ad")
    if truth_key is not None and report is None:
        raise ItClustError("--truth-key draws a confusion heatmap in the report; add --report DIR")
    if query_organism is not None and orthologs is None:
        query_organism = normalize_organism(query_organism, what="--query-organism",
                                            hint="; for another, pass --orthologs a CSV with a column per organism")
    outputs = _planned_outputs(out, tables, report, markers=True, confusion=truth_key is not None)
    check_output_files(outputs, force=force, inputs=[p for p in (query, orthologs) if p is not None])
    progress = _progress(no_progress)
    model = ItClust.from_pretrained(name, revision=revision, progress=progress)
    adata = read_query(query, format=fmt)
    if truth_key is not None and truth_key not in adata.obs.columns:
        raise ItClustError(f"--truth-key {truth_key!r} is not an obs column of {query} "
                           f"(have {', '.join(map(str, adata.obs.columns)) or 'none'})")
    settings = {key: value for key, value in {"min_confidence": min_confidence, "min_overlap": min_overlap}.items()
                if value is not None}
    if max_iter is not None:
        settings["fine_tuning"] = {"max_iter": max_iter}
    with warnings.catch_warnings():  # printed below, with the report's
        warnings.simplefilter("ignore", ItClustWarning)
        result = model.transfer(adata, gene_key=gene_key, layer=layer, use_raw=use_raw, input_type=input_type,
                                query_organism=query_organism, orthologs=orthologs, scale=scale, level=level, seed=seed,
                                device=device, progress=progress, **settings)
    written = [out]
    new = _new_paths(outputs)
    try:
        if tables is not None:
            written += result.write_tables(tables, force=force)
        if report is not None:
            written += result.report(report, adata=adata, model=model, truth_key=truth_key, force=force,
                                     orthologs=orthologs, seed=seed, progress=progress)
        _write_h5ad(result.to_adata(adata, copy=False), out)
    except BaseException:  # a failure (or Ctrl-C) while writing leaves none of the files this run created
        for path in new:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            elif path.is_file():
                path.unlink()
        raise

    prov = result.provenance
    revision_text = f" (revision {prov['revision'][:12]})" if prov.get("revision") else ""
    counts = label_counts(result)
    click.echo(f"Annotated {_plural(len(result.obs), 'cell')} with {prov.get('reference')}{revision_text}")
    click.echo(f"Genes: {gene_overlap_text(prov)}")
    click.echo(f"Input type assumed: {input_type_text(prov)}")
    click.echo(f"Scaled with: {scale_text(prov)}")
    click.echo("Labels: " + ", ".join(f"{label} {n:,}" for label, n in counts["cells"].items()))
    click.echo(f"Novel: {novel_text(result)}")
    click.echo(f"Query organism: {organism_text(prov)}")
    if prov.get("empty_cells"):
        click.echo(f"Empty cells: {prov['empty_cells']:,} express none of the genes the reference reads "
                   f"(labelled {UNASSIGNED}, left out of fine-tuning)")
    click.echo("Wrote: " + ", ".join(str(p) for p in written))
    for warning in report_warnings(result):
        click.echo(f"Warning: {cli_words(warning)}", err=True)


@main.command()
@click.argument("atlas", type=click.Path(path_type=Path))
@click.option("--label-key", required=True, help="obs column with the cell-type labels.")
@click.option("--name", required=True, help="Reference name (letters, digits, '-', '_', '.'), e.g. pancreas-human.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Reference folder to write.")
@click.option("--organism", help="Organism of the atlas, e.g. human, 'Homo sapiens', hs or 9606 "
              "(default: detected from its gene names, human when they cannot tell).")
@click.option("--tissue", default="unknown", show_default=True, help="Tissue of the atlas.")
@click.option("--format", "fmt", type=click.Choice(["h5ad", "10x-mtx", "10x-h5", "loom", "text"]),
              help="Atlas file format (default: from the file name).")
@click.option("--layer", help="Take expression values from this layer (e.g. counts).")
@click.option("--use-raw", is_flag=True, help="Take expression values from .raw.")
@click.option("--small-types", type=click.Choice(["error", "drop"]), default="error", show_default=True,
              help="What to do with cell types of too few cells: refuse, or drop them.")
@click.option("--min-cells-per-type", type=click.IntRange(min=1),
              help="Fewest cells a cell type needs (default: the library's, 2).")
@click.option("--description", help="One-line description for the model card.")
@click.option("--license", "license_", help="License of the reference (e.g. cc-by-4.0).")
@click.option("--citation", help="Citation of the atlas for the model card.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed of the training.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1),
              help="Autoencoder epochs per stage (default: the library's).")
@click.option("--epochs", type=click.IntRange(min=1), help="Most supervised epochs (default: the library's).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train data-parallel in this many processes on this machine (DistributedDataParallel: gloo on "
              "CPU, nccl with a GPU each); ATLAS must then be an .h5ad (an .h5ad's X is always read from disk "
              "chunk by chunk).")
@click.option("--force", is_flag=True,
              help="Replace the reference files in OUTPUT (a folder holding other files is refused).")
@click.option("--no-progress", is_flag=True, help="No progress bar (bars show only on a terminal anyway).")
def train(atlas, label_key, name, out, organism, tissue, fmt, layer, use_raw, small_types, min_cells_per_type,
          description, license_, citation, seed, pretrain_epochs, epochs, processes, force, no_progress) -> None:
    """Train a reference on a labelled ATLAS (raw counts preferred) and save it to OUTPUT."""
    from ._artifact import REFERENCE_FILES
    from ._io import detect_format, read_query
    from ._outputs import check_output_folder
    from ._registry import is_reference_name

    if not is_reference_name(name):
        raise ItClustError(f"--name {name!r} is not a valid reference name (letters, digits, '-', '_', '.')")
    check_output_folder(out, REFERENCE_FILES, force=force, inputs=[atlas])
    if organism is not None:
        organism = normalize_organism(organism, what="--organism")
    h5ad = atlas.exists() and (fmt or detect_format(atlas)) == "h5ad"
    if processes > 1 and atlas.exists() and not h5ad:
        raise ItClustError(f"--processes {processes} reads ATLAS from disk, which needs an .h5ad; convert {atlas} "
                           "to .h5ad or use --processes 1")
    if processes > 1 and (layer is not None or use_raw):
        raise ItClustError(f"--processes {processes} reads the .h5ad's X; drop --layer/--use-raw (put the counts in X) "
                           "or use --processes 1")
    # an .h5ad's X is read from disk chunk by chunk (memory bounded by a chunk, not the atlas); a layer or raw in memory
    adata = read_query(atlas, format=fmt, layer=layer, use_raw=use_raw, backed=h5ad and layer is None and not use_raw)
    if label_key not in adata.obs.columns:
        raise ItClustError(f"--label-key {label_key!r} is not an obs column of {atlas} "
                           f"(have {', '.join(map(str, adata.obs.columns)) or 'none'})")
    metadata = {k: v for k, v in {"description": description, "license": license_, "citation": citation}.items() if v}
    options = {k: v for k, v in {"pretrain_epochs": pretrain_epochs, "epochs": epochs,
                                 "min_cells_per_type": min_cells_per_type}.items() if v is not None}
    options.update(organism=organism, tissue=tissue, small_types=small_types, seed=seed,
                   progress=_progress(no_progress), metadata=metadata)
    if processes == 1:
        lines, caught = _train_and_save(adata, label_key, name, out, force, options)
    else:
        from ._distributed import launch

        done = launch(processes, _train_process, atlas, label_key, name, out, force, options)
        for failure in done:
            if isinstance(failure, ItClustError):
                raise failure
        lines, caught = done[0]
    for line in lines:
        click.echo(line)
    for message in caught:
        click.echo(f"Warning: {cli_words(message)}", err=True)


def _train_and_save(adata, label_key, name, out, force, options) -> tuple[list[str], list[str]] | None:
    """Train a reference (in each process under ``--processes``) and save it (in the first); return the
    lines to print and the library's warnings (None in the other processes)."""
    import torch.distributed as dist

    from ._train import train_reference

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ItClustWarning)
        model = train_reference(adata, label_key, name, **options)
    for warning in caught:
        if not issubclass(warning.category, ItClustWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if dist.is_initialized() and dist.get_rank() > 0:
        return None
    path = model.save_pretrained(out, force=force)
    processes = model.config.training["processes"]
    lines = [f"Trained {model.name}{f' on {processes} processes' if processes > 1 else ''}: "
             f"{model.config.n_cells:,} cells, {len(model.cell_types)} cell types, {len(model.genes):,} genes, "
             f"encoder {list(model.config.architecture.hidden_dims)}, organism {model.organism}",
             f"Saved to {path}; check it with `itclust-hub validate {path}`"]
    return lines, [str(w.message) for w in caught if issubclass(w.category, ItClustWarning)]


def _train_process(atlas, label_key, name, out, force, options):
    """One process of ``train --processes N`` (see :func:`itclust_hub._distributed.launch`): what
    :func:`_train_and_save` returns, or the ItClustError that stopped it."""
    import torch.distributed as dist

    from ._io import read_query

    try:
        return _train_and_save(read_query(atlas, backed=True), label_key, name, out, force,
                               dict(options, distributed=True))
    except ItClustError as err:
        return err
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def validate(folder) -> None:
    """Check that FOLDER is a loadable reference: files, checksums, format version, shapes, genes, labels
    (and for the copy bundled with itclust-hub, the index's checksums), as loading it checks them."""
    from ._model import ItClust

    if not folder.is_dir():
        raise ItClustError(f"{folder} is not a reference folder; give the folder that save_pretrained or "
                           "`itclust-hub train` wrote")
    model = ItClust.from_pretrained(folder.resolve())
    config = model.config
    has_card = (Path(folder) / "README.md").is_file()
    missing_card = "" if has_card else "; README.md (model card) is missing, push needs it"
    click.echo(f"OK {folder}: {model.name} version {config.version}, {model.organism} {config.tissue}, "
               f"{len(model.genes):,} genes, {len(model.cell_types)} cell types, encoder "
               f"{list(config.architecture.hidden_dims)}, format version {config.format_version}{missing_card}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="Hub model repo to upload to, ORG/NAME (created if missing).")
@click.option("--revision", help="Branch to upload to (default: main).")
@click.option("--index-repo", help="Dataset repo holding the reference index (default: the official one).")
@click.option("--no-pr", is_flag=True, help="Commit the index entry directly instead of opening a pull request.")
def push(folder, repo_id, revision, index_repo, no_pr) -> None:
    """Upload the reference FOLDER to the Hub and propose its entry in the reference index.

    Needs a token with write access: HF_TOKEN or `hf auth login`.
    """
    from ._artifact import read_reference
    from ._hub import push_reference

    read_reference(folder)
    options = {"index_repo": index_repo} if index_repo else {}
    pushed = push_reference(folder, repo_id, revision=revision, open_pr=not no_pr, **options)
    click.echo(f"Pushed {pushed.entry.name} to {pushed.repo_id} at revision {pushed.revision}")
    click.echo(f"Index entry: {pushed.index_url}")


@main.group(cls=_OneLineErrors)
def cache() -> None:
    """List or clear the references in the local cache."""


@cache.command("ls")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Hub cache folder (default: HF_HOME's).")
def cache_ls(cache_dir) -> None:
    """List cached references with revision, size and path."""
    from ._hub import cached_references

    table = cached_references(cache_dir=cache_dir)
    if table.empty:
        click.echo("No cached references.")
        return
    total = _human_size(table["size"].sum())
    table["revision"] = table["revision"].map(lambda r: r[:12] if isinstance(r, str) else r)
    table["size"] = table["size"].map(_human_size)
    _print_table(table[["name", "revision", "refs", "size", "source", "path"]])
    click.echo(f"{len(table)} cached, {total} in all")


@cache.command("clear")
@click.argument("name", required=False)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Hub cache folder (default: HF_HOME's).")
def cache_clear(name, cache_dir) -> None:
    """Delete cached references: all of them, or only NAME (registry name, org/repo[@rev] or URL)."""
    from ._hub import clear_cache

    freed = clear_cache(name, cache_dir=cache_dir)
    click.echo(f"Freed {_human_size(freed)}" + (f" ({name})" if name else ""))
