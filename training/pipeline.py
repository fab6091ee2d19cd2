"""From a checked recipe to a published reference: read the atlas, harmonise its labels, fit the reference
on all cells, measure it (held-out groups, cross-dataset), write the folder with its rendered card, and -
when it is the bundled copy - the entry in the packaged index and the link to its card in ``model_cards/``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad

import itclust_hub as ih
from itclust_hub._artifact import REFERENCE_FILES, ReferenceConfig
from itclust_hub._card import render_card
from itclust_hub._errors import ItClustError
from itclust_hub._evaluate import evaluate_transfer, held_out
from itclust_hub._outputs import check_output_folder
from itclust_hub._registry import INDEX_FILENAME, REFERENCES_DIR, ReferenceEntry
from itclust_hub._transfer import intra_op_threads

from .recipe import DATA_DIR, BuildRecipe

# model_cards/NAME.md: a relative symbolic link to the bundled card, itclust_hub/references/NAME/README.md (one copy)
MODEL_CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
COMPARED_FILES = ("model.safetensors", "genes.json", "labels.json", "config.json")
TORCH_THREADS = 1  # the bytes of a fit depend on the thread count (1 and 2 give different weights): builds fix it
# Largest difference between a refit's tensor and the bundled one, relative to the tensor's largest value, that
# verify accepts. The bytes depend on the CPU model beyond torch's capability name (which kernels MKL/oneDNN and
# SIMD reductions pick): a refit on an AVX2 AMD EPYC differed from the AVX512-built pancreas-human by up to
# 8.5e-6 (centroids), another AVX512 machine by up to 1.2e-5 absolute; labels were the same on every cell.
WEIGHT_TOLERANCE = 1e-4
MACHINE_FIELDS = ("files", "training.torch_cpu_capability")  # config.json fields that record the machine's bytes


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
    """The training atlas with harmonised labels; the held-out group column, if any, must exist."""
    data = recipe.spec["data"]
    adata = read_data(data_dir, data["file"], data["label_key"], recipe.spec["labels"]["harmonise"],
                      f"recipe {recipe.name}")
    stray = sorted(set(recipe.spec["labels"]["ontology"]) - set(adata.obs[data["label_key"]]))
    if stray:
        raise ItClustError(f"recipe {recipe.name}: labels.ontology names {stray[0]!r}, which is not a {data['label_key']} "
                           f"label of {data['file']} (after labels.harmonise)")
    held = recipe.spec["evaluation"]["held_out"]
    group_key = held and held["group_key"]
    if group_key is not None and group_key not in adata.obs.columns:
        raise ItClustError(f"recipe {recipe.name}: evaluation.held_out.group_key {group_key!r} is not an obs column "
                           f"of {data['file']}")
    return adata


def fit(recipe: BuildRecipe, atlas: ad.AnnData, progress: bool | None = None) -> ih.ItClust:
    """Train the reference on every cell of ``atlas`` with the recipe's settings and seed."""
    return ih.train_reference(atlas, recipe.spec["data"]["label_key"], recipe.name, progress=progress,
                              **recipe.train_options())


def evaluate(recipe: BuildRecipe, atlas: ad.AnnData, model: ih.ItClust, data_dir: Path = DATA_DIR,
             log: Callable[[str], None] = print) -> dict:
    """Held-out groups (each fold trained with the recipe's settings, types too small there dropped; none
    when the recipe's ``held_out`` is null) and every cross-dataset query of the recipe annotated by ``model``
    at its ``level``: the ``evaluation`` of the model card."""
    spec = recipe.spec
    label_key, held = spec["data"]["label_key"], spec["evaluation"]["held_out"]
    transfer = dict(spec["evaluation"]["transfer"])
    options = recipe.train_options(small_types="drop")

    def train(subset):
        return ih.train_reference(subset, label_key, recipe.name, progress=False, **options)

    folds = None
    if held is not None:
        group_key = held["group_key"]
        folds = {"group_key": group_key, **held_out(atlas, atlas.obs[label_key], atlas.obs[group_key], train,
                                                    log=log, progress=False, **transfer)}
    cross = []
    for item in spec["evaluation"]["cross_dataset"]:
        query = read_data(data_dir, item["file"], item["label_key"], item["harmonise"], f"recipe {recipe.name}")
        log(f"cross-dataset {item['name']}: annotating {query.n_obs} cells")
        scores = evaluate_transfer(model, query, query.obs[item["label_key"]], query_organism=item["query_organism"],
                                   level=item["level"], reference_harmonise=item["reference_harmonise"],
                                   progress=False, **transfer)
        cross.append({"name": item["name"], "dataset": item["dataset"], "query_organism": item["query_organism"],
                      **scores})
    return {"held_out": folds, "cross_dataset": cross, "transfer": transfer}


def bundled_folder(name: str) -> Path:
    """Where the package bundles the reference ``name``."""
    return REFERENCES_DIR / name


def link_card(name: str) -> Path:
    """Make ``model_cards/NAME.md`` a relative link to the bundled reference's card (replacing a copy)."""
    link = MODEL_CARDS_DIR / f"{name}.md"
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(bundled_folder(name) / "README.md", MODEL_CARDS_DIR))
    return link


def _write_index_entry(folder: Path, config: dict) -> None:
    """Put the bundled reference's entry (counts, version, license, citation, SHA-256 of all files) into
    the packaged index; the Hub revision stays as it was (null until the reference is pushed)."""
    path = REFERENCES_DIR / INDEX_FILENAME
    index = json.loads(path.read_text())
    current = index["references"].get(config["name"], {})
    entry = ReferenceEntry.from_config(config, current.get("repo_id", f"itclust-hub/{config['name']}"),
                                       current.get("revision"), folder)
    entry.bundled = True
    index["references"][config["name"]] = entry.to_dict()
    path.write_text(json.dumps(index, indent=2) + "\n")


def build(recipe: BuildRecipe, out: Path | None = None, force: bool = False, data_dir: Path = DATA_DIR,
          progress: bool | None = None, log: Callable[[str], None] = print) -> Path:
    """Build the reference of ``recipe`` into ``out`` (default: the bundled folder) and return the folder.

    Into the bundled folder, the packaged index entry is also updated and ``model_cards/NAME.md`` links to
    the card. An existing non-empty ``out`` needs ``force``, which replaces its reference files only.
    """
    target = Path(out) if out is not None else bundled_folder(recipe.name)
    bundled = target.resolve() == bundled_folder(recipe.name).resolve()
    check_output_folder(target, REFERENCE_FILES, force=force)
    start = time.perf_counter()
    atlas = read_atlas(recipe, data_dir)
    log(f"{recipe.name}: {atlas.n_obs} cells x {atlas.n_vars} genes from {recipe.spec['data']['file']}")
    with intra_op_threads(TORCH_THREADS):
        model = fit(recipe, atlas, progress)
    dropped = model.config.training["dropped_types"]
    log(f"fitted on all cells in {time.perf_counter() - start:.0f} s: {model.config.n_cells} cells, "
        f"{len(model.cell_types)} types, {len(model.genes)} genes, {model.config.training['epochs_run']} epochs"
        + (f"; dropped types: {', '.join(f'{t} ({n})' for t, n in dropped.items())}" if dropped else ""))
    with intra_op_threads(TORCH_THREADS):
        evaluation = evaluate(recipe, atlas, model, data_dir, log)
    card = render_card(model.config.to_dict(), model.cell_types, model.type_counts, evaluation,
                       genes={"ensembl_ids": model.gene_ids}, ontology=model.ontology, notes=recipe.spec["labels"]["notes"])
    folder = model.save_pretrained(target, force=force, card=card)
    if bundled:
        _write_index_entry(folder, json.loads((folder / "config.json").read_text()))
        link_card(recipe.name)
        log(f"updated itclust_hub/references/{INDEX_FILENAME}; model_cards/{recipe.name}.md links to the card")
    else:
        log(f"built outside the bundled folder: model_cards/ and {INDEX_FILENAME} left unchanged")
    held = evaluation["held_out"]
    log((f"held-out {held['group_key']} mean: accuracy {held['mean']['label']['accuracy']:.3f} (labels), "
         f"{held['mean']['nearest_label']['accuracy']:.3f} (nearest); " if held else "")
        + "; ".join(f"{c['name']}: {c['nearest_label']['accuracy']:.3f}" for c in evaluation["cross_dataset"]))
    log(f"wrote {folder} in {time.perf_counter() - start:.0f} s")
    return folder


def verify(recipe: BuildRecipe, folder: Path | None = None, data_dir: Path = DATA_DIR, scratch: Path | None = None,
           progress: bool | None = None) -> dict[str, tuple[bool, str]]:
    """Refit the reference (no evaluation) and compare it with ``folder`` (default: the bundled one).

    Returns check -> (passed, what was found) for genes.json and labels.json (the same bytes),
    model.safetensors (every tensor within ``WEIGHT_TOLERANCE``), config.json (as read, the same apart
    from ``MACHINE_FIELDS``) and the labels both give the recipe's first cross-dataset query (the same on every
    cell). The card also needs the evaluation, which ``build`` reruns. ``scratch`` is a folder for the refit.
    """
    import tempfile

    folder = Path(folder) if folder is not None else bundled_folder(recipe.name)
    atlas = read_atlas(recipe, data_dir)
    with intra_op_threads(TORCH_THREADS):
        model = fit(recipe, atlas, progress)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        refit = model.save_pretrained(Path(tmp) / recipe.name, card="")
        checks = {name: _compare_file(refit / name, folder / name) for name in COMPARED_FILES}
    for item in recipe.spec["evaluation"]["cross_dataset"][:1]:
        query = read_data(data_dir, item["file"], item["label_key"], item["harmonise"], f"recipe {recipe.name}")
        with intra_op_threads(TORCH_THREADS):
            labels = [m.transfer(query, query_organism=item["query_organism"], progress=False,
                                 **recipe.spec["evaluation"]["transfer"]).labels
                      for m in (model, ih.ItClust.from_pretrained(folder))]
        same = int((labels[0] == labels[1]).sum())
        checks[f"labels of {item['name']}"] = (same == query.n_obs, f"{same:,} of {query.n_obs:,} cells the same")
    return checks


def _compare_file(refit: Path, bundled: Path) -> tuple[bool, str]:
    """(passed, what was found) for one file of the refit against the bundled copy (see :func:`verify`)."""
    import numpy as np
    from safetensors.numpy import load_file

    if not bundled.is_file():
        return False, f"{bundled} is missing"
    if refit.read_bytes() == bundled.read_bytes():
        return True, "identical"
    if refit.suffix == ".safetensors":
        new, old = load_file(refit), load_file(bundled)
        if new.keys() != old.keys() or any(new[k].shape != old[k].shape for k in old):
            return False, "different tensors or shapes"
        worst = max(float(np.abs(new[k] - old[k]).max() / max(np.abs(old[k]).max(), 1e-30)) for k in old if old[k].size)
        return worst <= WEIGHT_TOLERANCE, f"largest difference {worst:.1e} of a tensor's largest value (tolerance {WEIGHT_TOLERANCE:g})"
    if refit.name == "config.json":
        new, old = (_without_machine_fields(_config_as_read(path)) for path in (refit, bundled))
        return new == old, f"{'the same' if new == old else 'DIFFERENT'} apart from {', '.join(MACHINE_FIELDS)}"
    return False, "DIFFERENT"


def _config_as_read(path: Path) -> dict:
    """``config.json`` as the client reads it: an older format brought up to date (e.g. the default fine-tuning
    settings of a reference written before it carried them), in its JSON form."""
    return json.loads(json.dumps(ReferenceConfig.from_dict(json.loads(path.read_text()), str(path)).to_dict()))


def _without_machine_fields(config: dict) -> dict:
    """``config`` without the fields of ``MACHINE_FIELDS`` (dotted paths)."""
    for field in MACHINE_FIELDS:
        *parents, last = field.split(".")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
    return config
