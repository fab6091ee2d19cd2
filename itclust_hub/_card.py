"""Model cards: a Hugging Face README.md with YAML front matter (license, tags, datasets, model-index),
rendered with ``huggingface_hub``'s ``ModelCard`` and ``ModelCardData`` from a reference's own config and, when
given, the training pipeline's measured evaluation.

Every number on a card comes from the config or the evaluation passed in; nothing is typed by hand.
"""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

ITCLUST_CITATION = ("Hu J, Li X, Hu G, Lyu Y, Susztak K, Li M. Iterative transfer learning with neural network for "
                    "clustering and cell type classification in single-cell RNA-seq analysis. "
                    "Nature Machine Intelligence 2, 607-618 (2020)")
FEW_CELLS = 20
WEAK_RECALL = 0.5
SCORE_NAMES = {"label": "final label", "nearest_label": "nearest reference type", "source_label": "source network"}
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "ari": "ARI"}


def _eval_results(title: str, dataset: str, dataset_name: str, level: str, split: str,
                  scores: dict) -> list[EvalResult]:
    """One Hub evaluation result per metric of the final label and the nearest reference type. The Hub tells
    results apart by task, dataset, config and split: the label level is the config, the cells scored the split."""
    return [EvalResult(task_type="cell-type-annotation", task_name=title, dataset_type=dataset,
                       dataset_name=dataset_name, dataset_config=level, dataset_split=split, metric_type=metric,
                       metric_name=f"{METRIC_NAMES[metric]} ({SCORE_NAMES[column]})",
                       metric_value=round(float(value), 4))
            for column in ("label", "nearest_label") for metric, value in scores[column].items()]


def card_data(config: dict, evaluation: dict | None = None) -> ModelCardData:
    """The card's YAML metadata: license, tags, datasets and, with an evaluation, the model-index."""
    meta = config.get("metadata", {})
    datasets = meta.get("datasets") or None
    results = []
    if evaluation:
        dataset = datasets[0] if datasets else config["name"]
        held = evaluation["held_out"]
        if held:
            key = held["group_key"]
            results += _eval_results(f"Cell-type annotation, leave-one-{key}-out", dataset,
                                     f"{meta.get('data_name', config['name'])}, held-out {key}s (mean)", "fine",
                                     f"held-out {key}s", held["mean"])
        for cross in evaluation["cross_dataset"]:
            results += _eval_results(f"Cell-type annotation, {cross['query_organism']} query", cross["dataset"],
                                     cross["name"], cross.get("level", "fine"), "all cells", cross)
    tags = ["single-cell", "itclust-hub", "cell-type-annotation", config["organism"], config["tissue"]]
    return ModelCardData(license=meta.get("license", "other"), library_name="itclust-hub", tags=tags,
                         datasets=datasets, model_name=config["name"] if results else None,
                         eval_results=results or None)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *[f"| {' | '.join(map(str, r))} |" for r in rows]]


def _scores_row(scores: dict) -> list[str]:
    return [f"{scores[column][metric]:.3f}" for column in SCORE_NAMES for metric in METRIC_NAMES]


SCORE_HEADER = [f"{METRIC_NAMES[m]} ({SCORE_NAMES[c]})" for c in SCORE_NAMES for m in METRIC_NAMES]


def _genes_text(config: dict, genes: dict | None) -> str:
    n_genes = config["architecture"]["n_genes"]
    text = f"{n_genes} genes, identified by gene symbol (matched case-insensitively)"
    ids = [g for g in (genes or {}).get("ensembl_ids") or [] if g]
    if ids:
        text += f"; {len(ids)} of them also carry an Ensembl gene ID, so queries indexed by Ensembl ID align too"
    return text + "."


def _ontology_text(entry: dict | None) -> list[str]:
    """The Cell Ontology columns of a type's row: its id, its coarse label and the coarse id."""
    if entry is None:
        return []
    return [entry["id"] or "-", entry["coarse"], entry["coarse_id"] or "-"]


def _training_section(config: dict, cell_types: list[str], counts: list[int], genes: dict | None,
                      per_type: dict | None, ontology: dict | None = None) -> list[str]:
    meta, train = config.get("metadata", {}), config.get("training", {})
    lines = ["## Training data", ""]
    if meta.get("data_name"):
        lines += [f"{meta['data_name']}" + (f" ({meta['platform']})" if meta.get("platform") else "")
                  + (f", GEO {', '.join(meta['datasets'])}" if meta.get("datasets") else "") + ".", ""]
    lines += [f"{config['n_cells']} cells, {len(cell_types)} cell types (labels from `{train.get('label_key', '?')}`), "
              f"{_genes_text(config, genes)}", ""]
    terms = ["Cell Ontology id", "coarse label", "coarse id"] if ontology else []
    if per_type:
        rows = [[t, n, *_ontology_text(ontology and ontology[t]),
                 f"{per_type[t]['correct'] / per_type[t]['cells']:.2f} ({per_type[t]['cells']})"
                 if per_type.get(t, {}).get("cells") else "-"] for t, n in zip(cell_types, counts)]
        lines += _table(["cell type", "cells", *terms, "held-out recall (cells)"], rows)
    else:
        lines += _table(["cell type", "cells", *terms],
                        [[t, n, *_ontology_text(ontology and ontology[t])] for t, n in zip(cell_types, counts)])
    if ontology:
        lines += ["", "`transfer(level=\"coarse\")` (CLI `--level coarse`) reports the coarse labels."]
    dropped = train.get("dropped_types") or {}
    if dropped:
        lines += ["", f"Left out for having fewer than {train.get('min_cells_per_type')} cells: "
                  + ", ".join(f"{t} ({n})" for t, n in dropped.items()) + "."]
    if train.get("cells_failing_qc"):
        lines += ["", f"{train['cells_failing_qc']} labelled cells failed QC."]
    return lines + [""]


def _preprocessing_section(config: dict) -> list[str]:
    pre, train = config["preprocessing"], config.get("training", {})
    return [
        "## Preprocessing",
        "",
        f"Input: {train.get('input_type', 'counts')}. Cells with < {pre['min_genes_per_cell']} genes and genes in "
        f"< {pre['min_cells_per_gene']} cells dropped, genes starting with {', '.join(pre['drop_gene_prefixes'])} "
        f"removed, normalised to {pre['target_sum']:g} counts per cell, log1p, {pre['n_top_genes']} highly variable "
        f"genes requested (Seurat flavour), scaled to zero mean and unit variance and clipped at {pre['max_value']:g}. "
        "A query gets the same steps, scaled with this reference's gene means and standard deviations (stored "
        "with the weights), or with its own when it is of another organism or measures under half of the genes "
        "(`transfer(scale=...)` chooses). Genes it lacks are filled in with their expected values given the genes "
        f"it measures, from a probabilistic PCA of the training cells ({config['architecture']['n_components']} "
        "components, stored with the weights)"
        + (f"; a query measuring under half of the genes (a targeted panel) also reads the other "
           f"{config['architecture']['n_context_genes']:,} genes of the atlas it measures (context genes, their "
           "loadings on the same components stored with the weights), and its cells are normalised by their depth "
           "over the genes they measure divided by the share of a training cell's expression those genes hold "
           "(each gene's share stored with the weights)."
           if config["architecture"].get("n_context_genes") else "."),
        "",
    ]


def _network_section(config: dict) -> list[str]:
    train = config.get("training", {})
    lines = ["## Network and training", "",
             f"Encoder {config['architecture']['hidden_dims']} (ReLU, tanh bottleneck) with a Student-t clustering "
             f"layer over {config['architecture']['n_types']} centroids."]
    large = train.get("large_atlas")
    if "epochs_run" in train and large:
        lines[-1] += (f" A large atlas, trained on samples: denoising-autoencoder pretraining on "
                      f"{large['pretrain_cells_per_stage']:,} cells per stage, then {train['epochs_run']} of at most "
                      f"{large['max_epochs']} supervised epochs of {large['cells_per_epoch']:,} cells (KL loss against "
                      f"labels smoothed by {train['label_smoothing']:g}, early stopping on a "
                      f"{large['validation_cells']:,}-cell validation sample), read in chunks of "
                      f"{large['chunk_cells']:,} consecutive cells.")
    elif "epochs_run" in train:
        lines[-1] += (f" Denoising-autoencoder pretraining {train['pretrain_epochs']} epochs per stage, then "
                      f"{train['epochs_run']} of at most {train['epochs']} supervised epochs (KL loss against labels "
                      f"smoothed by {train['label_smoothing']:g}, early stopping on a {train['val_fraction']:g} "
                      f"validation split).")
    if "epochs_run" in train:
        lines[-1] += (f" Gene masking: {train['mask_prob']:g} of batches lose up to {train['mask_max_rate']:g} of "
                      f"their genes, filled in from the rest as at transfer. Seed {train['seed']}"
                      + (f", {train['processes']} processes" if train.get("processes", 1) > 1 else "") + ".")
    tuning = config.get("fine_tuning")
    if tuning:
        lines += ["", "Fine-tuning on a query (`transfer`'s defaults, the settings this reference was validated "
                  "with): " + ", ".join(f"`{key}={value}`" for key, value in tuning.items()) + "."]
    return lines + [""]


def _cross_details(cross: dict) -> list[str]:
    """Per-type recall of a cross-dataset query and the share of its cells of unknown types called Unassigned
    (none where the evaluation does not hold them)."""
    if not cross.get("per_type"):
        return []
    recall = ", ".join(f"{t} {c['correct'] / c['cells']:.2f} ({c['cells']})" for t, c in cross["per_type"].items())
    text = f"- {cross['name']}: recall of the nearest reference type per type (cells): {recall}."
    flagged = cross.get("unknown_flagged") or {}
    if flagged:
        text += (" Cells of types the reference lacks called Unassigned: "
                 + ", ".join(f"{t} {share:.2f} of {cross['unknown_types'][t]}" for t, share in flagged.items()) + ".")
    return [text]


def _evaluation_section(evaluation: dict) -> list[str]:
    held = evaluation["held_out"]
    lines = ["## Evaluation", ""]
    if held:
        key = held["group_key"]
        lines += [f"Measured by the training pipeline. Held-out: for each {key}, a reference with the same settings "
                  f"was trained on the other {key}s and transferred to it. Scores are over cells of types that "
                  "reference knows: final label (\"Unassigned\" counts as wrong), nearest reference type of the "
                  "cell's cluster, and the source network's direct prediction before fine-tuning.", ""]
        rows = [[f["group"], f"{f['n_scored']}/{f['n_cells']}", *_scores_row(f)] for f in held["folds"]]
        rows.append(["mean", "", *_scores_row(held["mean"])])
        lines += _table([key, "cells scored", *SCORE_HEADER], rows) + [""]
    else:
        lines += ["Measured by the training pipeline on independent queries only: the atlas has no groups (donors, "
                  "runs) to hold out that do not coincide with its cell types. Scores are over cells of types the "
                  "reference knows: final label (\"Unassigned\" counts as wrong), nearest reference type of the "
                  "cell's cluster, and the source network's direct prediction before fine-tuning.", ""]
    if evaluation["cross_dataset"]:
        lines += ["Cross-dataset: the reference trained on all cells, transferred to another dataset "
                  "(genes mapped through the one-to-one ortholog table when the organism differs) and scored at "
                  "the label level given (the query's labels renamed to the reference's).", ""]
        rows = [[c["name"], c["query_organism"], c.get("level", "fine"), f"{c['gene_overlap']:.2f}",
                 f"{c['n_scored']}/{c['n_cells']}", *_scores_row(c)] for c in evaluation["cross_dataset"]]
        lines += _table(["query", "organism", "level", "gene overlap", "cells scored", *SCORE_HEADER], rows) + [""]
        details = [line for c in evaluation["cross_dataset"] for line in _cross_details(c)]
        lines += [*details, ""] if details else []
    settings = ", ".join(f"{k}={v}" for k, v in evaluation.get("transfer", {}).items())
    return lines + [f"Transfer settings: defaults of `ItClust.transfer`{', ' + settings if settings else ''}.", ""]


def _limits_section(config: dict, cell_types: list[str], counts: list[int], evaluation: dict | None) -> list[str]:
    meta, train = config.get("metadata", {}), config.get("training", {})
    limits = []
    if meta.get("data_name"):
        limits.append(f"Trained on one study ({meta['data_name']}"
                      + (f", {meta['platform']}" if meta.get("platform") else "") + "); other platforms and "
                      "disease states are not measured here.")
    if train.get("dropped_types"):
        limits.append("Cannot name " + ", ".join(train["dropped_types"]) + " (too few training cells); such cells "
                      "get the nearest known type or \"Unassigned\".")
    few = [f"{t} ({n})" for t, n in zip(cell_types, counts) if n < FEW_CELLS]
    if few:
        limits.append(f"Types learned from fewer than {FEW_CELLS} cells: {', '.join(few)}; expect lower recall.")
    if evaluation and evaluation["held_out"]:
        pooled = evaluation["held_out"]["per_type"]
        weak = [f"{t} ({c['correct'] / c['cells']:.2f} of {c['cells']})" for t, c in pooled.items()
                if c["cells"] and c["correct"] / c["cells"] < WEAK_RECALL]
        if weak:
            limits.append(f"Held-out recall below {WEAK_RECALL:g}: {', '.join(weak)}.")
    if evaluation:
        for cross in evaluation["cross_dataset"]:
            if cross["unknown_types"]:
                limits.append(f"{cross['name']}: types this reference lacks were not scored: "
                              + ", ".join(f"{t} ({n})" for t, n in cross["unknown_types"].items()) + ".")
    if not limits:
        return []
    return ["## Known limits", "", *[f"- {text}" for text in limits], ""]


def _citation_section(config: dict) -> list[str]:
    meta = config.get("metadata", {})
    lines = ["## How to cite", ""]
    if meta.get("citation"):
        lines += ["The training data:", "", f"> {meta['citation']}", ""]
    lines += ["The method:", "", f"> {ITCLUST_CITATION}", "",
              f"and this reference as itclust-hub `{config['name']}` version {config.get('version', '?')}.", ""]
    return lines


def render_card(config: dict, cell_types: list[str], counts: list[int], evaluation: dict | None = None,
                genes: dict | None = None, ontology: dict | None = None, notes: list[str] = ()) -> ModelCard:
    """Render the model card of a reference: :func:`card_data`'s metadata over the Markdown body.

    ``config`` is the reference's config (``metadata`` may hold description, license, citation, datasets,
    data_name and platform); ``evaluation`` is what the training pipeline measured: ``held_out`` (from
    :func:`itclust_hub._evaluate.held_out` plus ``group_key``), ``cross_dataset`` (a list of
    :func:`itclust_hub._evaluate.evaluate_transfer` results plus ``name``, ``dataset`` and
    ``query_organism``) and ``transfer`` (the settings used); its ``held_out`` may be None. ``genes`` is
    the content of genes.json, ``ontology`` the types' Cell Ontology terms (labels.json), ``notes`` lines of
    the recipe's own on how its labels were chosen.
    """
    meta = config.get("metadata", {})
    per_type = evaluation["held_out"]["per_type"] if evaluation and evaluation["held_out"] else None
    lines = [
        f"# {config['name']}",
        "",
        meta.get("description", f"ItClust reference for {config['organism']} {config['tissue']}."),
        "",
        "```python",
        "import itclust_hub as ih",
        f"model = ih.ItClust.from_pretrained({config['name']!r})",
        "result = model.transfer(adata)  # raw counts, log-normalised or TPM; adata is not modified",
        "```",
        "",
        *_training_section(config, cell_types, counts, genes, per_type, ontology),
        *(["## Label set", "", *notes, ""] if notes else []),
        *_preprocessing_section(config),
        *_network_section(config),
        *(_evaluation_section(evaluation) if evaluation else []),
        *_limits_section(config, cell_types, counts, evaluation),
        *_citation_section(config),
    ]
    return ModelCard(f"---\n{card_data(config, evaluation).to_yaml()}\n---\n\n" + "\n".join(lines))
