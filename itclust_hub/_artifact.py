"""The reference format: the artifact on disk (``model.safetensors`` + ``config.json`` + ``genes.json`` +
``labels.json`` + ``README.md``), its typed config (:class:`ReferenceConfig`), its version, the one upgrade
path for older versions, and the tensor names and shapes the config implies. Written atomically, read
without executing code, and checked on load (files present, checksums, format version, config fields,
tensor names and shapes, gene and label counts)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._errors import ItClustError
from ._outputs import check_output_folder, current_umask
from ._ontology import check_ontology
from ._preprocess import Recipe
from ._transfer import FineTuning

# 2 adds context genes (genes.json context lists, context_* tensors); 3 adds each gene's share of a cell's
# expression (gene_share, context_share); 1 and 2 are still read
FORMAT_VERSION = 3
SHARE_FORMAT = 3  # the format that adds gene_share and context_share (earlier references lack them)
CHECKED_FILES = ("model.safetensors", "genes.json", "labels.json")
REFERENCE_FILES = ("config.json", *CHECKED_FILES, "README.md")


@dataclass(frozen=True)
class Architecture:
    """The network's sizes (``config.json["architecture"]``)."""

    n_genes: int  # reference genes: the encoder's inputs
    hidden_dims: tuple[int, ...]  # encoder layer sizes; the last is the embedding
    n_types: int  # cell types: one centroid each
    n_components: int  # columns of the imputation model's gene loadings
    n_context_genes: int = 0  # genes read only to fill in missing reference genes (format 2 on)
    alpha: float = 1.0  # Student-t degrees of freedom of the soft assignment

    def to_dict(self) -> dict:
        return {"n_genes": self.n_genes, "hidden_dims": list(self.hidden_dims), "n_types": self.n_types,
                "alpha": self.alpha, "n_components": self.n_components, "n_context_genes": self.n_context_genes}


@dataclass
class ReferenceConfig:
    """``config.json``, typed and checked on load: what the reference is, its network's sizes, the
    preprocessing recipe, the fine-tuning settings it was validated with, and records for people (how it
    was trained, library versions, metadata for the card and index, the other files' checksums)."""

    name: str
    version: str
    organism: str
    tissue: str
    n_cells: int
    architecture: Architecture
    preprocessing: Recipe
    fine_tuning: FineTuning = field(default_factory=FineTuning)
    training: dict = field(default_factory=dict)  # how it was trained: a record, not read by the client
    library_versions: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # license, citation, data: what the card and the index show
    format_version: int = FORMAT_VERSION
    files: dict = field(default_factory=dict)  # file name -> SHA-256, written by write_reference

    @classmethod
    def from_dict(cls, config: dict, where: str) -> "ReferenceConfig":
        """Parse a ``config.json`` (brought up to date by :func:`upgrade` first); ``where`` names the file in
        error messages."""
        config = upgrade(config)
        missing = [name for name in ("name", "version", "organism", "tissue", "n_cells", "architecture",
                                     "preprocessing") if name not in config]
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if missing:
            raise ItClustError(f"{where} lacks {', '.join(missing)}; the reference is damaged: re-download or re-save it")
        if unknown:
            raise ItClustError(f"{where} has fields this itclust-hub does not know ({', '.join(unknown)}); "
                               "run pip install -U itclust-hub")
        for name in ("name", "version", "organism", "tissue"):
            if not isinstance(config[name], str):
                raise ItClustError(f"{where}: {name} must be text, not {config[name]!r}; the reference is damaged")
        for name in ("preprocessing", "training", "library_versions", "metadata", "files", "fine_tuning"):
            if not isinstance(config.get(name, {}), dict):
                raise ItClustError(f"{where}: {name} must be an object; the reference is damaged")
        arch = config["architecture"]
        if (not isinstance(arch, dict) or not isinstance(arch.get("hidden_dims"), list)
                or not isinstance(arch.get("alpha", 1.0), (int, float))):
            raise ItClustError(f"{where} lacks a valid 'architecture'; the reference is damaged")
        count = lambda value, what: _count(value, what, where)  # noqa: E731
        architecture = Architecture(
            n_genes=count(arch.get("n_genes"), "architecture n_genes"),
            hidden_dims=tuple(count(d, "architecture hidden_dims") for d in arch["hidden_dims"]),
            n_types=count(arch.get("n_types"), "architecture n_types"),
            n_components=count(arch.get("n_components"), "architecture n_components"),
            n_context_genes=count(arch.get("n_context_genes", 0), "architecture n_context_genes"),
            alpha=float(arch.get("alpha", 1.0)))
        return cls(name=config["name"], version=config["version"], organism=config["organism"],
                   tissue=config["tissue"], n_cells=count(config["n_cells"], "n_cells"), architecture=architecture,
                   preprocessing=Recipe.from_dict(config["preprocessing"]),
                   fine_tuning=FineTuning().updated(config.get("fine_tuning", {})),
                   training=config.get("training", {}), library_versions=config.get("library_versions", {}),
                   metadata=config.get("metadata", {}), format_version=config["format_version"],
                   files=config.get("files", {}))

    def to_dict(self) -> dict:
        """The JSON form, as ``config.json`` holds it."""
        return {"format_version": self.format_version, "name": self.name, "version": self.version,
                "organism": self.organism, "tissue": self.tissue, "n_cells": self.n_cells,
                "architecture": self.architecture.to_dict(), "preprocessing": self.preprocessing.to_dict(),
                "training": self.training, "fine_tuning": self.fine_tuning.to_dict(),
                "library_versions": self.library_versions, "metadata": self.metadata,
                **({"files": self.files} if self.files else {})}


def _count(value, what: str, where: str) -> int:
    """``value``, a non-negative integer read from JSON (refused: booleans, fractions, negatives, absent)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ItClustError(f"{where}: {what} must be a non-negative integer, not {value!r}; the reference is damaged")
    return value


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_reference(folder, config: ReferenceConfig, tensors: dict[str, torch.Tensor], genes: dict, labels: dict,
                    card: str, force: bool = False) -> Path:
    """Write a reference folder atomically and return its absolute path.

    A new folder is written in a temporary one that is then renamed into place. An existing folder must hold
    nothing but a reference's own files (``REFERENCE_FILES``) and is replaced only with ``force``: each file is
    replaced atomically, ``config.json`` (which holds the others' checksums) last, and nothing else in the
    folder or around it is touched.
    """
    folder = check_output_folder(folder, REFERENCE_FILES, force=force)
    replace = folder.is_dir()
    if not replace:
        folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".itclust-staging.", dir=folder if replace else folder.parent))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, staging / "model.safetensors",
                  metadata={"format": "pt"})
        _write_json(staging / "genes.json", genes)
        _write_json(staging / "labels.json", labels)
        files = {name: sha256(staging / name) for name in CHECKED_FILES}
        _write_json(staging / "config.json", dict(config.to_dict(), files=files))
        (staging / "README.md").write_text(card)
        _follow_umask(staging)
        if replace:
            for name in sorted(REFERENCE_FILES, key=lambda name: name == "config.json"):
                os.replace(staging / name, folder / name)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _follow_umask(folder: Path) -> None:
    """Give a temporary folder and its files the permissions a plain mkdir/open would have."""
    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ItClustError(f"{path} is not valid JSON ({err.msg if hasattr(err, 'msg') else err}); re-download the reference") from None


CONTEXT_TENSORS = ("mean", "std", "loadings", "noise", "share")  # stored as context_<name> when a reference has context genes


def join_tensors(encoder_state: dict[str, torch.Tensor], parts: dict[str, torch.Tensor | None],
                 context: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The tensors as ``model.safetensors`` stores them: the encoder's as ``encoder.<name>``, each part (centroids,
    type profiles, gene statistics; None: absent) under its name, the context genes' as ``context_<name>``."""
    tensors = {f"encoder.{name}": value for name, value in encoder_state.items()}
    tensors.update({name: value for name, value in parts.items() if value is not None})
    tensors.update({f"context_{name}": value for name, value in (context or {}).items()})
    return tensors


def split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict, dict | None]:
    """:func:`join_tensors` undone: the encoder's state dict, the parts, the context tensors (None without)."""
    encoder = {name[len("encoder."):]: value for name, value in tensors.items() if name.startswith("encoder.")}
    context = {name[len("context_"):]: value for name, value in tensors.items() if name.startswith("context_")}
    parts = {name: value for name, value in tensors.items() if not name.startswith(("encoder.", "context_"))}
    return encoder, parts, context or None


def check_format(folder: Path, what: str) -> dict:
    """Read ``folder/config.json`` and refuse a reference whose ``format_version`` this client cannot read.

    ``what`` names the reference in the error message. Returns the parsed config.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ItClustError(f"{what} is not an itclust-hub reference: {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ItClustError(f"{path} is not valid JSON; re-download or re-save {what}") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise ItClustError(f"{path} has no integer format_version; {what} is damaged or not an itclust-hub reference")
    if version > FORMAT_VERSION:
        raise ItClustError(
            f"{what} needs reference format version {version} but this itclust-hub reads up to "
            f"{FORMAT_VERSION}; run pip install -U itclust-hub"
        )
    return config


def upgrade(config: dict) -> dict:
    """``config`` of an older reference as this client reads it: the one place where older formats are brought
    up to date. Their tensors and gene lists are read as they are (format 1 has no context genes, formats 1
    and 2 no gene shares: :func:`expected_shapes` and the model treat those as absent); a reference without
    fine-tuning settings (``fine_tuning``) gets :class:`~itclust_hub.FineTuning`'s defaults in
    :class:`ReferenceConfig`."""
    preprocessing = config.get("preprocessing")
    if isinstance(preprocessing, dict) and "scale_with" in preprocessing:
        # written by references built before transfer(scale=...) decided the scaling; never read
        config = dict(config, preprocessing={k: v for k, v in preprocessing.items() if k != "scale_with"})
    return config


def expected_shapes(config: ReferenceConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that ``config.architecture`` implies."""
    arch = config.architecture
    sizes = [arch.n_genes, *arch.hidden_dims]
    shapes = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"encoder.layers.{i}.weight"] = (b, a)
        shapes[f"encoder.layers.{i}.bias"] = (b,)
    shapes["centroids"] = (arch.n_types, sizes[-1])
    shapes["type_profiles"] = (arch.n_types, arch.n_genes)
    shapes["gene_mean"] = shapes["gene_std"] = (arch.n_genes,)
    shapes["gene_loadings"] = (arch.n_genes, arch.n_components)
    shapes["gene_noise"] = ()
    if arch.n_context_genes:
        shapes["context_mean"] = shapes["context_std"] = shapes["context_noise"] = (arch.n_context_genes,)
        shapes["context_loadings"] = (arch.n_context_genes, arch.n_components)
    if config.format_version >= SHARE_FORMAT:
        shapes["gene_share"] = (arch.n_genes,)
        if arch.n_context_genes:
            shapes["context_share"] = (arch.n_context_genes,)
    return shapes


def read_reference(folder) -> tuple[ReferenceConfig, dict[str, torch.Tensor], dict, dict]:
    """Load and validate a reference folder; returns ``(config, tensors, genes, labels)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ItClustError(f"{folder} is not a reference folder; give a registry name, org/repo or a folder path")
    missing = [name for name in REFERENCE_FILES[:-1] if not (folder / name).is_file()]
    if missing:
        raise ItClustError(f"{folder} lacks {', '.join(missing)}; re-download or re-save the reference")
    config = ReferenceConfig.from_dict(check_format(folder, str(folder)), str(folder / "config.json"))
    for name in CHECKED_FILES:
        want = config.files.get(name)
        if want is None or sha256(folder / name) != want:
            raise ItClustError(f"{folder / name} does not match its checksum in config.json (truncated or altered); re-download it")
    try:
        tensors = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise ItClustError(f"{folder / 'model.safetensors'} cannot be read ({err}); re-download it") from None
    shapes = expected_shapes(config)
    if set(tensors) != set(shapes):
        raise ItClustError(f"{folder / 'model.safetensors'} holds tensors {sorted(tensors)}, expected {sorted(shapes)}")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise ItClustError(f"{folder / 'model.safetensors'}: tensor {key} has shape {tuple(tensors[key].shape)}, config says {shape}")
    genes, labels = _read_json(folder / "genes.json"), _read_json(folder / "labels.json")
    n_genes, n_types, n_context = config.architecture.n_genes, config.architecture.n_types, config.architecture.n_context_genes
    for names, ids, n, what in (("symbols", "ensembl_ids", n_genes, "genes"),
                                ("context_symbols", "context_ensembl_ids", n_context, "context genes")):
        if len(genes.get(names) or []) != n:
            raise ItClustError(f"{folder / 'genes.json'} lists {len(genes.get(names) or [])} {what}, config says {n}")
        if genes.get(ids) is not None and len(genes[ids]) != n:
            raise ItClustError(f"{folder / 'genes.json'} lists {len(genes[ids])} Ensembl IDs of {what}, config says {n}")
    if len(labels.get("cell_types", [])) != n_types or len(labels.get("counts", [])) != n_types:
        raise ItClustError(f"{folder / 'labels.json'} does not list {n_types} cell types with counts as config says")
    check_ontology(labels.get("ontology"), labels["cell_types"], str(folder / "labels.json"))  # optional
    return config, tensors, genes, labels
