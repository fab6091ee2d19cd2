"""Cell Ontology terms of a reference's types at two resolutions: each type's own term (fine) and a coarse
parent (``CD4+/CD45RA+/CD25- Naive T`` -> CL:0000895, coarse ``CD4 T`` CL:0000624). Stored per type in
``labels.json`` under ``"ontology"`` (optional: references without it load, with fine labels only), checked
on load and when training, and applied to a transfer's labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ._errors import ItClustError

LEVELS = ("fine", "coarse")
FIELDS = ("id", "coarse", "coarse_id")
ONTOLOGY_COLUMNS = ("fine_label", "coarse_label", "ontology_id", "coarse_ontology_id")
UNASSIGNED = "Unassigned"  # the label of cells in novel clusters and of empty cells, at every level
_CL_ID = re.compile(r"^CL:\d{7}$")


def is_ontology_id(value) -> bool:
    """Whether ``value`` is a Cell Ontology id such as ``CL:0000236``."""
    return isinstance(value, str) and bool(_CL_ID.match(value))


def check_ontology(ontology, cell_types, where: str) -> dict[str, dict] | None:
    """Check ``ontology`` (cell type -> ``{"id": "CL:...", "coarse": name, "coarse_id": "CL:..."}``, ids may
    be null where no term fits) against the reference's ``cell_types`` and return it in their order.

    Every type needs an entry; entries of other names are refused (a typo would silently drop a term).
    ``where`` names the source in the one-line error. ``None`` passes through (no ontology).
    """
    if ontology is None:
        return None
    if not isinstance(ontology, dict):
        raise ItClustError(f"{where}: the ontology must map each cell type to its terms, not {type(ontology).__name__}")
    missing = [t for t in cell_types if t not in ontology]
    if missing:
        raise ItClustError(f"{where}: cell type {missing[0]!r} has no ontology entry (give id, coarse and coarse_id)")
    stray = sorted(set(ontology) - set(cell_types))
    if stray:
        raise ItClustError(f"{where}: ontology entry {stray[0]!r} names no cell type of the reference")
    for name in cell_types:
        entry = ontology[name]
        if not isinstance(entry, dict) or set(entry) != set(FIELDS):
            raise ItClustError(f"{where}: ontology entry {name!r} must have exactly the fields {', '.join(FIELDS)}")
        if not isinstance(entry["coarse"], str) or not entry["coarse"]:
            raise ItClustError(f"{where}: ontology entry {name!r} needs a coarse label (a non-empty string)")
        for key in ("id", "coarse_id"):
            if entry[key] is not None and not is_ontology_id(entry[key]):
                raise ItClustError(f"{where}: ontology entry {name!r} has {key} {entry[key]!r}, not a Cell Ontology id "
                                   "like CL:0000236 (or null)")
    return {name: dict(ontology[name]) for name in cell_types}


def _term(ontology: dict, names: pd.Series, field: str | None) -> np.ndarray:
    """Per name, its coarse label (``field="coarse"``), an id field, or - ``None`` - the name itself; names
    without an entry ("Unassigned") keep the name for labels and get no id."""
    if field is None:
        return names.to_numpy(dtype=object)
    fallback = names if field == "coarse" else pd.Series(np.nan, index=names.index, dtype=object)
    return names.map({k: v[field] for k, v in ontology.items()}).where(names.isin(list(ontology)), fallback).to_numpy(
        dtype=object)


def check_level(level: str, ontology: dict | None, reference: str) -> None:
    """Refuse a ``level`` that is not one of :data:`LEVELS`, or ``"coarse"`` for a reference without terms."""
    if level not in LEVELS:
        raise ItClustError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    if level == "coarse" and ontology is None:
        raise ItClustError(f"reference {reference!r} has no coarse labels (its labels.json carries no ontology); "
                           "use level='fine'")


def at_level(result, ontology: dict | None, level: str):
    """``result`` with the ontology columns added to ``obs`` (``fine_label``, ``coarse_label``,
    ``ontology_id`` of the fine label and ``coarse_ontology_id``) and, at ``level="coarse"``, its labels,
    probabilities and cluster names at the coarse level (a coarse type's probability sums its fine types').
    ``level`` has passed :func:`check_level` (the transfer checks it before fine-tuning)."""
    if ontology is None:
        return result
    # records, not a dict keyed by type: type names such as "CD4+/CD25 T Reg" cannot be HDF5 keys (to_adata)
    result.provenance["ontology"] = [{"type": name, **terms} for name, terms in ontology.items()]
    fine = result.obs["label"].astype(str)
    for column, field in zip(ONTOLOGY_COLUMNS, (None, "coarse", "id", "coarse_id")):
        result.obs[column] = _term(ontology, fine, field)
    if level == "fine":
        return result
    for column in ("label", "nearest_label", "source_label"):
        result.obs[column] = _term(ontology, result.obs[column].astype(str), "coarse")
    for column in ("label", "nearest_label", "closest_type"):
        result.clusters[column] = _term(ontology, result.clusters[column].astype(str), "coarse")
    coarse = [ontology[t]["coarse"] for t in result.probabilities.columns]
    result.probabilities = result.probabilities.T.groupby(coarse, sort=False).sum().T
    return result
