"""Model cards: a Hugging Face README.md with YAML front matter, rendered from a reference's own
config and, when given, the training pipeline's measured evaluation."""

from __future__ import annotations


def render_card(config: dict, cell_types: list[str], counts: list[int], evaluation: dict | None = None) -> str:
    """Render the model card text for a reference."""
    meta = config.get("metadata", {})
    pre = config["preprocessing"]
    front = [
        "---",
        f"license: {meta.get('license', 'other')}",
        "library_name: itclust-hub",
        "tags:",
        "- single-cell",
        "- itclust-hub",
        f"- {config['organism']}",
        f"- {config['tissue']}",
        "---",
    ]
    lines = [
        f"# {config['name']}",
        "",
        meta.get("description", f"ItClust reference for {config['organism']} {config['tissue']}."),
        "",
        "## Training data",
        "",
        f"{config['n_cells']} cells, {len(cell_types)} cell types, {config['architecture']['n_genes']} genes "
        f"({pre['n_top_genes']} highly variable genes requested), encoder {config['architecture']['hidden_dims']}.",
        "",
        "| cell type | cells |",
        "|---|---|",
        *[f"| {t} | {n} |" for t, n in zip(cell_types, counts)],
        "",
        "## Preprocessing",
        "",
        f"Cells with < {pre['min_genes_per_cell']} genes and genes in < {pre['min_cells_per_gene']} cells dropped, "
        f"genes starting with {', '.join(pre['drop_gene_prefixes'])} removed, normalised to {pre['target_sum']:g} "
        f"counts per cell, log1p, scaled per dataset (own statistics) and clipped at {pre['max_value']:g}.",
        "",
    ]
    if meta.get("citation"):
        lines += ["## Citation", "", meta["citation"], ""]
    return "\n".join(front + [""] + lines)
