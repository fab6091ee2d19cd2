"""From a checked recipe to a published reference: read the atlas, harmonise its labels, fit the reference
on all cells, measure it (held-out groups, cross-dataset), write the folder with its rendered card, and -
when it is the bundled copy - the model card in ``model_cards/`` and the entry in the packaged index."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import torch

import itclust_hub as ih
from itclust_hub._artifact import REFERENCE_FILES
from itclust_hub._card import render_card
from itclust_hub._errors import ItClustError
from itclust_hub._evaluate import evaluate_transfer, held_out
from itclust_hub._hub import _entry_from_config
from itclust_hub._outputs import check_output_folder
from itclust_hub._registry import INDEX_FILENAME, REFERENCES_DIR

from .recipe import DATA_DIR, BuildRecipe

MODEL_CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
COMPARED_FILES = ("model.safetensors", "genes.json", "labels.json", "config.json")
TORCH_THREADS = 1


@contextmanager
def torch_threads(n: int = TORCH_THREADS):
    """Run with ``n`` torch threads, then restore the count. The bytes of a fit depend on the thread count
    (1 and 2 threads give different weights), so builds fix it; on a busy machine one thread also trains
    these small networks several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_data(data_dir: Path, file: str, label_key: str, harmonise: dict, what: str) -> ad.AnnData:
    """Read ``data_dir/file`` and rename its ``label_key`` labels through ``harmonise``.

    A missing file or label column, and a harmonisation entry that names no label, are one-line errors.
    """
    path = Path(data_dir) / file
    if not path.is_file():
        raise ItClustError(f"{what}: data file {path} not found; pass --data-dir")
    adata = ad.read_h5ad(path)
    if label_key not in adata.obs.columns:
        raise ItClustError(f"{what}: label key {label_key!r} is not an obs column of {file} "
                           f"(have {', '.join(map(str, adata.obs.columns))})")
    labels = adata.obs[label_key].astype(str)
    stray = sorted(set(harmonise) - set(labels))
    if stray:
        raise ItClustError(f"{what}: harmonise renames {stray[0]!r}, which is not a {label_key} label of {file}")
    adata.obs[label_key] = labels.replace(harmonise)
    return adata


def read_atlas(recipe: BuildRecipe, data_dir: Path = DATA_DIR) -> ad.AnnData:
    """The training atlas with harmonised labels; the held-out group column must exist."""
    data = recipe.spec["data"]
    adata = read_data(data_dir, data["file"], data["label_key"], recipe.spec["labels"]["harmonise"],
                      f"recipe {recipe.name}")
    group_key = recipe.spec["evaluation"]["held_out"]["group_key"]
    if group_key not in adata.obs.columns:
        raise ItClustError(f"recipe {recipe.name}: evaluation.held_out.group_key {group_key!r} is not an obs column "
                           f"of {data['file']}")
    return adata


def fit(recipe: BuildRecipe, atlas: ad.AnnData, progress: bool | None = None) -> ih.ItClust:
    """Train the reference on every cell of ``atlas`` with the recipe's settings and seed."""
    return ih.train_reference(atlas, recipe.spec["data"]["label_key"], recipe.name, progress=progress,
                              **recipe.train_options())


def evaluate(recipe: BuildRecipe, atlas: ad.AnnData, model: ih.ItClust, data_dir: Path = DATA_DIR,
             log: Callable[[str], None] = print) -> dict:
    """Held-out groups (each fold trained with the recipe's settings, types too small there dropped) and
    every cross-dataset query of the recipe annotated by ``model``: the ``evaluation`` of the model card."""
    spec = recipe.spec
    label_key, group_key = spec["data"]["label_key"], spec["evaluation"]["held_out"]["group_key"]
    transfer = dict(spec["evaluation"]["transfer"])
    options = recipe.train_options(small_types="drop")

    def train(subset):
        return ih.train_reference(subset, label_key, recipe.name, progress=False, **options)

    folds = held_out(atlas, atlas.obs[label_key], atlas.obs[group_key], train, log=log, progress=False, **transfer)
    cross = []
    for item in spec["evaluation"]["cross_dataset"]:
        query = read_data(data_dir, item["file"], item["label_key"], item["harmonise"], f"recipe {recipe.name}")
        log(f"cross-dataset {item['name']}: annotating {query.n_obs} cells")
        scores = evaluate_transfer(model, query, query.obs[item["label_key"]], query_organism=item["query_organism"],
                                   progress=False, **transfer)
        cross.append({"name": item["name"], "dataset": item["dataset"], "query_organism": item["query_organism"],
                      **scores})
    return {"held_out": {"group_key": group_key, **folds}, "cross_dataset": cross, "transfer": transfer}


def bundled_folder(name: str) -> Path:
    """Where the package bundles the reference ``name``."""
    return REFERENCES_DIR / name


def _write_index_entry(folder: Path, config: dict) -> None:
    """Put the bundled reference's entry (counts, version, license, citation, SHA-256 of all files) into
    the packaged index; the Hub revision stays as it was (null until the reference is pushed)."""
    path = REFERENCES_DIR / INDEX_FILENAME
    index = json.loads(path.read_text())
    current = index["references"].get(config["name"], {})
    entry = _entry_from_config(config, current.get("repo_id", f"itclust-hub/{config['name']}"),
                               current.get("revision"), folder)
    entry.bundled = True
    index["references"][config["name"]] = entry.to_dict()
    path.write_text(json.dumps(index, indent=2) + "\n")


def build(recipe: BuildRecipe, out: Path | None = None, force: bool = False, data_dir: Path = DATA_DIR,
          progress: bool | None = None, log: Callable[[str], None] = print) -> Path:
    """Build the reference of ``recipe`` into ``out`` (default: the bundled folder) and return the folder.

    Into the bundled folder, the card is also copied to ``model_cards/NAME.md`` and the packaged index
    entry is updated. An existing non-empty ``out`` needs ``force``, which replaces its reference files only.
    """
    target = Path(out) if out is not None else bundled_folder(recipe.name)
    bundled = target.resolve() == bundled_folder(recipe.name).resolve()
    check_output_folder(target, REFERENCE_FILES, force=force)
    start = time.perf_counter()
    atlas = read_atlas(recipe, data_dir)
    log(f"{recipe.name}: {atlas.n_obs} cells x {atlas.n_vars} genes from {recipe.spec['data']['file']}")
    with torch_threads():
        model = fit(recipe, atlas, progress)
    dropped = model.config["training"]["dropped_types"]
    log(f"fitted on all cells in {time.perf_counter() - start:.0f} s: {model.config['n_cells']} cells, "
        f"{len(model.cell_types)} types, {len(model.genes)} genes, {model.config['training']['epochs_run']} epochs"
        + (f"; dropped types: {', '.join(f'{t} ({n})' for t, n in dropped.items())}" if dropped else ""))
    with torch_threads():
        evaluation = evaluate(recipe, atlas, model, data_dir, log)
    card = render_card(model.config, model.cell_types, model.type_counts, evaluation,
                       genes={"ensembl_ids": model.gene_ids})
    folder = model.save_pretrained(target, force=force, card=card)
    if bundled:
        (MODEL_CARDS_DIR / f"{recipe.name}.md").write_text(card)
        _write_index_entry(folder, json.loads((folder / "config.json").read_text()))
        log(f"updated model_cards/{recipe.name}.md and itclust_hub/references/{INDEX_FILENAME}")
    else:
        log(f"built outside the bundled folder: model_cards/ and {INDEX_FILENAME} left unchanged")
    held = evaluation["held_out"]["mean"]
    log(f"held-out {evaluation['held_out']['group_key']} mean: accuracy {held['label']['accuracy']:.3f} (labels), "
        f"{held['nearest_label']['accuracy']:.3f} (nearest); "
        + "; ".join(f"{c['name']}: {c['nearest_label']['accuracy']:.3f}" for c in evaluation["cross_dataset"]))
    log(f"wrote {folder} in {time.perf_counter() - start:.0f} s")
    return folder


def verify(recipe: BuildRecipe, folder: Path | None = None, data_dir: Path = DATA_DIR, scratch: Path | None = None,
           progress: bool | None = None) -> dict[str, bool]:
    """Refit the reference (no evaluation) and compare its files with ``folder`` (default: the bundled one).

    Returns file name -> identical, for model.safetensors, genes.json, labels.json and config.json (the
    card also needs the evaluation, which ``build`` reruns). ``scratch`` is a folder to write the refit to.
    """
    import tempfile

    from itclust_hub._artifact import sha256

    folder = Path(folder) if folder is not None else bundled_folder(recipe.name)
    atlas = read_atlas(recipe, data_dir)
    with torch_threads():
        model = fit(recipe, atlas, progress)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        refit = model.save_pretrained(Path(tmp) / recipe.name, card="")
        return {name: (folder / name).is_file() and sha256(folder / name) == sha256(refit / name)
                for name in COMPARED_FILES}
