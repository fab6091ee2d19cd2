"""Recipes: one JSON file per curated reference in ``training/recipes/``, checked field by field so a
missing, unknown or mistyped field is a one-line error before any data is read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from itclust_hub._errors import ItClustError
from itclust_hub._ontology import LEVELS, check_ontology
from itclust_hub._preprocess import INPUT_TYPES, Recipe
from itclust_hub._registry import is_reference_name

RECIPES_DIR = Path(__file__).parent / "recipes"
DATA_ENV = "ITCLUST_HUB_DATA"  # names the data folder; default ../shared/data beside the repository
DATA_DIR = Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")

_NUMBER = (int, float)
CROSS_DATASET = {"name": str, "dataset": str, "file": str, "label_key": str, "query_organism": str,
                 "harmonise": dict, "level": str, "reference_harmonise": dict}
HELD_OUT = {"group_key": str}
SCHEMA = {
    "name": str, "version": str, "description": str, "organism": str, "tissue": str, "license": str,
    "citation": str, "datasets": list,
    "data": {"file": str, "name": str, "platform": str, "input_type": str, "label_key": str},
    "labels": {"harmonise": dict, "ontology": dict, "notes": list, "min_cells_per_type": int, "small_types": str},
    "preprocessing": {"min_genes_per_cell": int, "min_cells_per_gene": int, "drop_gene_prefixes": list,
                      "target_sum": _NUMBER, "n_top_genes": int, "max_value": _NUMBER},
    "network": {"hidden_dims": (list, type(None))},
    "training": {"pretrain_epochs": int, "epochs": int, "patience": int, "batch_size": int, "lr": _NUMBER,
                 "pretrain_lr": _NUMBER, "val_fraction": _NUMBER, "label_smoothing": _NUMBER,
                 "mask_max_rate": _NUMBER, "mask_prob": _NUMBER, "seed": int},
    "evaluation": {"held_out": (dict, type(None)), "cross_dataset": list, "transfer": {"seed": int}},
}


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list",
                        dict: "an object", type(None): "null"}[k] for k in kinds)


def _check(value, schema, where: str, source: str) -> None:
    """Refuse missing, unknown and mistyped fields of ``value`` against ``schema`` (nested dicts)."""
    if not isinstance(value, dict):
        raise ItClustError(f"{source}: {where.rstrip('.') or 'the recipe'} must be an object")
    missing = [k for k in schema if k not in value]
    if missing:
        raise ItClustError(f"{source}: missing field '{where}{missing[0]}'")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise ItClustError(f"{source}: unknown field '{where}{unknown[0]}'")
    for key, kind in schema.items():
        if isinstance(kind, dict):
            _check(value[key], kind, f"{where}{key}.", source)
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wrong_bool = isinstance(value[key], bool)  # a JSON true is not a number
        if wrong_bool or not isinstance(value[key], kinds):
            raise ItClustError(f"{source}: field '{where}{key}' must be {_type_name(kind)}, "
                               f"not {json.dumps(value[key])}")


@dataclass(frozen=True)
class BuildRecipe:
    """A checked recipe: where the data is, how to label, preprocess, train and evaluate a reference."""

    path: Path
    spec: dict

    @property
    def name(self) -> str:
        return self.spec["name"]

    def preprocessing(self) -> Recipe:
        """The preprocessing recipe stored in the reference."""
        return Recipe.from_dict(self.spec["preprocessing"])

    def metadata(self) -> dict:
        """``config.json`` metadata: what the model card and the index show."""
        s = self.spec
        return {"version": s["version"], "description": s["description"], "license": s["license"],
                "citation": s["citation"], "datasets": s["datasets"], "data_name": s["data"]["name"],
                "platform": s["data"]["platform"]}

    def train_options(self, small_types: str | None = None) -> dict:
        """Keyword arguments of :func:`itclust_hub.train_reference` (``small_types`` overrides the recipe's)."""
        s = self.spec
        return dict(organism=s["organism"], tissue=s["tissue"], recipe=self.preprocessing(),
                    input_type=s["data"]["input_type"], hidden_dims=s["network"]["hidden_dims"],
                    min_cells_per_type=s["labels"]["min_cells_per_type"],
                    small_types=small_types or s["labels"]["small_types"], metadata=self.metadata(),
                    ontology=s["labels"]["ontology"], **s["training"])


def recipe_path(name_or_path: str) -> Path:
    """``training/recipes/NAME.json`` for a name, else the path given."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return path
    return RECIPES_DIR / f"{name_or_path}.json"


def load_recipe(name_or_path: str) -> BuildRecipe:
    """Read and check a recipe by name (``pancreas-human``) or path; every problem is a one-line error."""
    path = recipe_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
        raise ItClustError(f"no recipe {name_or_path!r} (have {known}; or give a path to a .json recipe)")
    try:
        spec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ItClustError(f"{path} is not valid JSON ({err})") from None
    source = f"recipe {path.name}"
    _check(spec, SCHEMA, "", source)
    if spec["evaluation"]["held_out"] is not None:  # null: the atlas has no groups to hold out (types = runs)
        _check(spec["evaluation"]["held_out"], HELD_OUT, "evaluation.held_out.", source)
    for i, cross in enumerate(spec["evaluation"]["cross_dataset"]):
        _check(cross, CROSS_DATASET, f"evaluation.cross_dataset[{i}].", source)
        if cross["level"] not in LEVELS:
            raise ItClustError(f"{source}: evaluation.cross_dataset[{i}].level must be one of {', '.join(LEVELS)}")
    ontology = spec["labels"]["ontology"]
    check_ontology(ontology, list(ontology), f"{source}: labels.ontology")  # the entries; types are checked at fit
    if not is_reference_name(spec["name"]):
        raise ItClustError(f"{source}: name {spec['name']!r} is not a valid reference name")
    if spec["data"]["input_type"] not in ("auto", *INPUT_TYPES):
        raise ItClustError(f"{source}: data.input_type must be 'auto' or one of {INPUT_TYPES}")
    if spec["labels"]["small_types"] not in ("error", "drop"):
        raise ItClustError(f"{source}: labels.small_types must be 'error' or 'drop'")
    return BuildRecipe(path, spec)
