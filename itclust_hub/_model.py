"""``ItClust``: a pretrained source network with its gene list, label map and preprocessing recipe;
``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` and the target-side ``transfer``."""

from __future__ import annotations

import platform
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from ._artifact import (CONTEXT_TENSORS, Architecture, ReferenceConfig, join_tensors, read_reference, split_tensors,
                        write_reference)
from ._card import render_card
from ._errors import ItClustError, ItClustWarning
from ._impute import impute_missing
from ._network import Encoder
from ._ontology import UNASSIGNED, check_level
from ._preprocess import Recipe
from ._query import MIN_OVERLAP, prepare_query
from ._query_clusters import query_clusters
from ._naming import build_result, check_min_confidence
from ._result import TransferResult
from ._transfer import FineTuning, fine_tune


def _library_versions() -> dict:
    packages = ("itclust-hub", "torch", "anndata", "scanpy", "numpy", "safetensors")
    return {name: version(name) for name in packages} | {"python": platform.python_version()}


class ItClust:
    """A reference: source encoder + centroids, genes, cell types and preprocessing recipe.

    Build one with :func:`itclust_hub.train_reference` or load one with :meth:`from_pretrained`;
    annotate a query with :meth:`transfer`.
    """

    def __init__(self, config: ReferenceConfig, tensors: dict[str, torch.Tensor], genes: dict, labels: dict,
                 source=None):
        self.config = config
        self.recipe = config.preprocessing
        self.gene_lists = genes  # genes.json as read or assembled: written back unchanged by save_pretrained
        self.genes: list[str] = list(genes["symbols"])
        self.gene_ids: list[str | None] | None = genes.get("ensembl_ids")
        self.cell_types: list[str] = list(labels["cell_types"])
        self.type_counts: list[int] = list(labels["counts"])
        self.ontology: dict[str, dict] | None = labels.get("ontology")  # type -> id, coarse, coarse_id
        encoder_state, parts, context = split_tensors(tensors)
        self.encoder = Encoder(len(self.genes), list(config.architecture.hidden_dims))
        self.encoder.load_state_dict(encoder_state)
        self.encoder.eval()
        self.centroids, self.type_profiles = parts["centroids"], parts["type_profiles"]
        self.gene_mean, self.gene_std = parts["gene_mean"], parts["gene_std"]
        self.gene_loadings, self.gene_noise = parts["gene_loadings"], parts["gene_noise"]
        self.gene_share = parts.get("gene_share")  # None in references of format 1 and 2
        self.context_genes: list[str] = list(genes.get("context_symbols", []))
        self.context_gene_ids: list[str | None] | None = genes.get("context_ensembl_ids")
        self.context = context if self.context_genes else None  # mean, std, loadings, noise (and share)
        self.source = source or {}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def organism(self) -> str:
        return self.config.organism

    @property
    def fine_tuning(self) -> FineTuning:
        """The self-training settings this reference was validated with (``config.fine_tuning``), the
        defaults of :meth:`transfer`; assign a :class:`FineTuning`, or a dict of the fields to change, to change
        them (saved by :meth:`save_pretrained`)."""
        return self.config.fine_tuning

    @fine_tuning.setter
    def fine_tuning(self, settings: FineTuning | dict | None) -> None:
        self.config.fine_tuning = self.config.fine_tuning.updated(settings)

    def __repr__(self) -> str:
        return (f"ItClust({self.name!r}, organism={self.organism!r}, tissue={self.config.tissue!r}, "
                f"{len(self.genes)} genes, {len(self.cell_types)} cell types)")

    @classmethod
    def from_parts(cls, *, name, organism, tissue, recipe: Recipe, hidden_dims, encoder: Encoder, centroids,
                   type_profiles, gene_mean, gene_std, gene_loadings, gene_noise, gene_share, genes, gene_ids,
                   cell_types, type_counts, training, metadata, context: dict | None = None,
                   ontology: dict | None = None) -> "ItClust":
        """Assemble a reference from trained parts (used by training). ``context`` holds the other genes'
        ``symbols``, ``ensembl_ids`` and their ``mean``, ``std``, ``loadings``, ``noise`` and ``share``;
        ``ontology`` each type's Cell Ontology terms (see :mod:`itclust_hub._ontology`)."""
        context = context if context is not None and len(context["symbols"]) else None
        config = ReferenceConfig(
            name=name, version=metadata.get("version", "1.0.0"), organism=organism, tissue=tissue,
            n_cells=int(sum(type_counts)),
            architecture=Architecture(n_genes=len(genes), hidden_dims=tuple(hidden_dims), n_types=len(cell_types),
                                      n_components=int(gene_loadings.shape[1]),
                                      n_context_genes=0 if context is None else len(context["symbols"])),
            preprocessing=recipe, training=training, library_versions=_library_versions(),
            metadata={k: v for k, v in metadata.items() if k != "version"})
        parts = dict(centroids=centroids.detach().clone(), type_profiles=type_profiles.detach().clone(),
                     gene_mean=torch.as_tensor(gene_mean).clone(), gene_std=torch.as_tensor(gene_std).clone(),
                     gene_loadings=torch.as_tensor(gene_loadings).clone(),
                     gene_noise=torch.tensor(gene_noise, dtype=torch.float32),
                     gene_share=torch.as_tensor(gene_share, dtype=torch.float32).clone())
        gene_lists = {"symbols": genes, "ensembl_ids": gene_ids}
        if context is not None:
            gene_lists.update(context_symbols=context["symbols"], context_ensembl_ids=context["ensembl_ids"])
            context = {k: torch.as_tensor(context[k], dtype=torch.float32).clone() for k in CONTEXT_TENSORS}
        encoder_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        return cls(config, join_tensors(encoder_state, parts, context), gene_lists,
                   {"cell_types": cell_types, "counts": type_counts, "ontology": ontology})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights as they are stored in ``model.safetensors``."""
        return join_tensors(self.encoder.state_dict(), dict(
            centroids=self.centroids, type_profiles=self.type_profiles, gene_mean=self.gene_mean,
            gene_std=self.gene_std, gene_loadings=self.gene_loadings, gene_noise=self.gene_noise,
            gene_share=self.gene_share), self.context)

    def _panel_inputs(self) -> dict:
        """:func:`~itclust_hub._query.prepare_query`'s ``context`` and ``shares`` for this reference (None where
        it has no context genes, or a format before shares)."""
        if self.context is None:
            return {"context": None, "shares": None}
        return {"context": (self.context_genes, self.context_gene_ids,
                            (self.context["mean"].numpy(), self.context["std"].numpy())),
                "shares": None if self.gene_share is None else (self.gene_share.numpy(), self.context["share"].numpy())}

    def _encoder_for(self, prepared) -> Encoder:
        """The source encoder reading ``prepared``'s columns: missing genes filled in, context genes read."""
        measured = prepared.context_present
        context = None if measured is None else (self.context["loadings"][measured], self.context["noise"][measured])
        return impute_missing(self.encoder, self.gene_loadings, float(self.gene_noise), prepared.alignment.present,
                              context)

    def save_pretrained(self, folder, *, force: bool = False, card=None) -> Path:
        """Write the reference folder (safetensors + JSON + model card) atomically; returns its absolute path.

        Refuses a non-empty folder unless ``force``, and even then one holding anything but a reference's own
        files (config.json, model.safetensors, genes.json, labels.json, README.md): ``force`` replaces those
        and nothing else. ``card`` (text or a ``huggingface_hub.ModelCard``) replaces the default card.
        """
        return write_reference(
            folder, self.config, self.tensors(),
            self.gene_lists,
            {"cell_types": self.cell_types, "counts": self.type_counts,
             **({"ontology": self.ontology} if self.ontology is not None else {})},
            str(card if card is not None else render_card(self.config.to_dict(), self.cell_types, self.type_counts,
                                                          ontology=self.ontology)),
            force=force,
        )

    @classmethod
    def from_pretrained(cls, name_or_path, revision: str | None = None, *, cache_dir=None,
                        local_files_only: bool = False, token=None, progress: bool | None = None) -> "ItClust":
        """Load a reference by registry name (``"pancreas-human"``, ``"name@rev"``), Hub repo id
        (``"org/repo[@rev]"``), URL of a file server folder, or local folder.

        Downloads go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``local_files_only``);
        the files are verified before loading and nothing is executed. ``progress`` shows the download
        bars (default: only on a terminal).
        """
        from ._hub import resolve_reference

        resolved = resolve_reference(str(name_or_path), revision=revision, cache_dir=cache_dir,
                                     local_files_only=local_files_only, token=token, progress=progress)
        config, tensors, genes, labels = read_reference(resolved.path)
        return cls(config, tensors, genes, labels, source={
            "source": resolved.source, "repo_id": resolved.repo_id, "revision": resolved.revision,
            "path": str(resolved.path)})

    def push_to_hub(self, repo_id: str, *, token=None, folder=None, **kwargs):
        """Save to ``folder`` (a temporary one by default) and upload with ``huggingface_hub``."""
        import tempfile

        from ._hub import push_reference

        with tempfile.TemporaryDirectory() as tmp:
            path = self.save_pretrained(Path(folder or tmp) / self.name, force=folder is None)
            return push_reference(path, repo_id, token=token, **kwargs)

    def transfer(
        self,
        adata,
        *,
        gene_key: str | None = None,
        layer: str | None = None,
        use_raw: bool = False,
        input_type: str = "auto",
        query_organism: str | None = None,
        orthologs=None,
        min_overlap: float = MIN_OVERLAP,
        scale: str = "auto",
        fine_tuning: FineTuning | dict | None = None,
        min_confidence: float | None = None,
        level: str = "fine",
        seed: int = 0,
        device: str = "cpu",
        progress: bool | None = None,
        memory_budget: int | None = None,
        spill_dir=None,
    ) -> TransferResult:
        """Annotate ``adata`` by ItClust's target-side iterative fine-tuning; ``adata`` is not modified.

        The query is also clustered on its own structure (``_query_clusters``); a cluster that matches no
        reference type is a population the reference does not know, labelled ``"Unassigned"``
        (``result.query_clusters``; the rules: :func:`itclust_hub.name_clusters`).

        Cells with no expression in any query gene the reference reads are left out of fine-tuning and
        labelled ``"Unassigned"`` with ``result.obs["empty"]`` True (an :class:`ItClustWarning` and
        ``result.provenance["empty_cells"]`` count them); a query of only such cells is refused.

        Parameters
        ----------
        adata
            Query cells (in memory or backed). Raw counts, log-normalised values or TPM.
        gene_key
            ``var`` column with gene symbols or Ensembl IDs (default: the best of ``var_names`` and
            every text column).
        layer, use_raw
            Take the expression values from ``adata.layers[layer]`` or ``adata.raw``.
        input_type
            ``"auto"`` (detect), ``"counts"``, ``"lognorm"`` or ``"tpm"``; what was assumed is in
            ``result.provenance``.
        query_organism, orthologs
            Organism of the query, any usual spelling (``"mouse"``, ``"Mus musculus"``, ``"mm"``, ``10090``);
            default: the organism its gene names are written as (mouse ``Gcg``, human ``GCG``; Ensembl
            ``ENSMUSG`` / ``ENSG``), the reference's when they cannot tell (an :class:`ItClustWarning` says
            when it was detected as another or is doubtful; ``result.provenance["organism_choice"]`` says
            how). A query of another organism is mapped through the bundled one-to-one human/mouse table or
            ``orthologs`` (DataFrame or CSV, a column per organism).
        min_overlap
            Least number of genes the reference reads that the query must measure, as a share of the
            reference genes (default 2%): its reference genes count and, for a query measuring under half of
            them (a targeted panel), its context genes too. A query that reaches it only with context genes,
            or whose overlap is under the one from which accuracy was measured to hold, transfers with a
            warning that quotes the accuracy measured on real panels at a similar overlap.
        scale
            Per-gene statistics the query is scaled with: ``"reference"`` (the reference's mean and standard
            deviation: the same yardstick as the training cells, so the query's cell-type composition does
            not shift it), ``"own"`` (the query's own, as the original ItClust: absorbs a shift of a gene's
            baseline between datasets, needed across species) or ``"auto"``: ``"reference"`` when the query
            is of the reference's organism and measures at least half of its genes, else ``"own"``. What
            was used is in ``result.provenance["scale"]``.
        fine_tuning
            Self-training settings (:class:`~itclust_hub.FineTuning`: ``tol``, ``max_iter``,
            ``epochs_per_iter``, ``batch_size``, ``lr``, ``max_cells_per_iter``), as a ``FineTuning`` or a
            dict of the ones to change, e.g. ``{"max_iter": 10}``; default: the reference's own
            (``model.fine_tuning``, the settings it was validated with). Each iteration trains on at most
            ``max_cells_per_iter`` cells (default 50,000) drawn at random; queries up to that size train on
            every cell, as ItClust does.
        min_confidence
            Threshold of the naming step's confidence rule (:func:`itclust_hub.name_clusters`, where its rules
            are listed): a cluster is novel ("Unassigned") when under this share of its cells started
            self-training with its type (0.5: ItClust's; 0: never). Default: 0.5 for a query of another organism,
            off for one of the reference's, where the query's own clusters find novel populations.
            ``name_clusters(result, ...)`` applies another threshold or level without fine-tuning.
        level
            ``"fine"``: the reference's own types; ``"coarse"``: their coarse parents from the reference's
            Cell Ontology terms (``CD4 T`` for naive and memory CD4 T cells; probabilities summed). When the
            reference carries terms, ``obs`` also holds ``fine_label``, ``coarse_label``, ``ontology_id`` and
            ``coarse_ontology_id`` at either level.
        seed, device, progress
            Determinism, torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), and the progress bar
            (default: only on a terminal).
        memory_budget, spill_dir
            Bytes the aligned, log-normalised query may take in memory (default 512 MiB); a larger one is
            written to a temporary folder in ``spill_dir`` (default: the system's) and read back in chunks,
            so memory is bounded by the chunk size, not the query size. A backed AnnData
            (``anndata.read_h5ad(path, backed="r")``) is read from disk chunk by chunk.
        """
        from ._query import ALIGNED_BUDGET_BYTES

        settings = self.fine_tuning.updated(fine_tuning)
        check_level(level, self.ontology, self.name)  # before fine-tuning, not after
        check_min_confidence(min_confidence)
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ItClustError(f"device {device!r} is not a torch device ({err})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ItClustError(f"device {str(device)!r} asked for but torch sees no CUDA GPU; use device='cpu'")
        prepared = prepare_query(
            adata, genes=self.genes, gene_ids=self.gene_ids, organism=self.organism, recipe=self.recipe,
            input_type=input_type, gene_key=gene_key, layer=layer, use_raw=use_raw,
            query_organism=query_organism, orthologs=orthologs, min_overlap=min_overlap,
            scale=scale, reference_stats=(self.gene_mean.numpy(), self.gene_std.numpy()), **self._panel_inputs(),
            memory_budget=ALIGNED_BUDGET_BYTES if memory_budget is None else int(memory_budget), spill_dir=spill_dir,
        )
        try:
            n_empty = int(prepared.empty.sum())
            n_read = prepared.alignment.n_overlap + (0 if prepared.context_present is None else
                                                     int(prepared.context_present.sum()))
            if n_empty == adata.n_obs:
                raise ItClustError(
                    f"none of the {adata.n_obs:,} cells has expression in any of the {n_read:,} query genes the "
                    "reference reads; check that the values are the expression (X, or the layer or raw you chose) "
                    "and that the gene names match (gene_key=, query_organism=)")
            encoder = self._encoder_for(prepared)
            cells = prepared.data.stored_rows() if n_empty else prepared.data
            outcome = fine_tune(encoder, self.centroids, cells, settings, seed=seed, progress=progress, device=device)
            own = query_clusters(cells, prepared.alignment.present, seed=seed)
        finally:
            prepared.data.close()
        notes = [prepared.organism.message(
            "query_organism", f"its genes were mapped to {self.organism}'s through one-to-one orthologs",
            "the reference's")]
        if n_empty:
            notes.append(f"{n_empty:,} of {adata.n_obs:,} cells have no expression in any of the {n_read:,} query genes "
                         f"the reference reads: labelled {UNASSIGNED} (obs column 'empty'), left out of fine-tuning")
        notes = [note for note in notes if note]
        for note in notes:
            warnings.warn(note, ItClustWarning, stacklevel=2)
        provenance = {
            "reference": self.name, "reference_version": self.config.version, **self.source,
            "layer": layer, "use_raw": use_raw, **prepared.summary(), "warnings": notes,
            "n_iter": outcome.n_iter, "converged": outcome.converged, "changed": outcome.changed,
            "settings": {**settings.to_dict(), "min_confidence": min_confidence, "level": level, "seed": seed,
                         "device": str(device)},
        }
        return build_result(outcome, own, self.cell_types, self.genes, self.type_profiles.numpy(),
                            prepared.alignment.present, adata.obs_names, min_confidence, provenance, prepared.empty,
                            same_organism=prepared.organism.organism == self.organism, ontology=self.ontology,
                            level=level)
