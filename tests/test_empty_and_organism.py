"""Cells with no expression get no reference type, and the organism of a query or atlas is read from its gene
names (issue 20, items 2 and 3): on the bundled reference with real Baron data, and on small synthetic cases."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import itclust_hub as ih
from itclust_hub._errors import ItClustError, ItClustWarning
from itclust_hub._genes import choose_organism, normalize_organism
from itclust_hub.cli import main

from _data import read


@pytest.fixture(scope="module")
def bundled():
    return ih.ItClust.from_pretrained("pancreas-human")


def _one_line_error(call, match):
    with pytest.raises(ItClustError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def _with_rows(adata, rows: sp.csr_matrix, at: np.ndarray, prefix: str) -> ad.AnnData:
    """``adata`` with ``rows`` inserted so that they land at positions ``at`` of the result."""
    n = adata.n_obs + rows.shape[0]
    order = np.empty(n, dtype=int)
    mask = np.zeros(n, bool)
    mask[at] = True
    order[~mask] = np.arange(adata.n_obs)
    order[mask] = adata.n_obs + np.arange(rows.shape[0])
    X = sp.vstack([sp.csr_matrix(adata.X, dtype=np.float32), rows.astype(np.float32)], format="csr")[order]
    names = np.concatenate([adata.obs_names, [f"{prefix}{i}" for i in range(rows.shape[0])]])[order]
    return ad.AnnData(X, obs=pd.DataFrame(index=names), var=adata.var.copy())


# --- empty cells ----------------------------------------------------------------------------------------------

def test_cells_without_expression_get_no_type_and_stay_out_of_fine_tuning(bundled):
    # 100 all-zero cells, and 2 cells whose only counts are in genes the reference does not read, spread among
    # human3's cells: such cells were labelled delta at probability 0.41 (not novel). Now they are Unassigned,
    # marked empty and counted, and the other cells get exactly the labels they get without them.
    human = read("baron_human_pancreas")
    query = human[human.obs["donor"] == "human3"].copy()
    unread = np.flatnonzero(~query.var_names.isin(bundled.genes + bundled.context_genes))[:2]
    rows = sp.lil_matrix((102, query.n_vars))
    rows[100, unread[0]] = 5
    rows[101, unread] = 3
    at = np.sort(np.random.default_rng(0).choice(query.n_obs + 102, 102, replace=False))
    mixed = _with_rows(query, rows.tocsr(), at, "added")
    with pytest.warns(ItClustWarning, match=r"102 of 1,016 cells have no expression"):
        result = bundled.transfer(mixed, progress=False)
    plain = bundled.transfer(query, progress=False)

    assert list(result.obs.index) == list(mixed.obs_names)
    empty = result.obs["empty"].to_numpy()
    assert (np.flatnonzero(empty) == at).all()
    assert (result.obs.loc[empty, ["label", "nearest_label", "source_label"]] == "Unassigned").all().all()
    assert (result.obs.loc[empty, "cluster"] == -1).all() and (result.obs.loc[empty, "probability"] == 0).all()
    assert not result.obs.loc[empty, "novel"].any() and (result.probabilities[empty].to_numpy() == 0).all()
    assert np.isfinite(result.embedding).all() and len(result.embedding) == mixed.n_obs
    assert result.provenance["empty_cells"] == 102 and "102 of 1,016" in result.provenance["warnings"][0]
    kept = result.obs[~empty]
    assert (kept["label"] == plain.labels).all() and np.allclose(kept["probability"], plain.obs["probability"])
    assert np.allclose(result.embedding[~empty], plain.embedding)
    assert result.clusters["size"].sum() == query.n_obs


def test_one_count_in_a_gene_the_reference_reads_is_not_empty(bundled):
    from itclust_hub._query import prepare_query

    human = read("baron_human_pancreas")[:50].copy()
    X = sp.lil_matrix(human.shape, dtype=np.float32)
    X[0, int(np.flatnonzero(human.var_names == bundled.genes[0])[0])] = 1
    X[1, int(np.flatnonzero(~human.var_names.isin(bundled.genes + bundled.context_genes))[0])] = 7
    human.X = X.tocsr()
    kwargs = dict(genes=bundled.genes, gene_ids=bundled.gene_ids, organism=bundled.organism, recipe=bundled.recipe)
    prepared, spilled = prepare_query(human, **kwargs), prepare_query(human, **kwargs, memory_budget=1)
    assert prepared.empty.tolist() == spilled.empty.tolist() == [False] + [True] * 49
    assert spilled.data.on_disk and not prepared.data.on_disk
    for data in (prepared.data, spilled.data):  # the empty rows left out, the storage shared
        kept = data.stored_rows()
        assert kept.n_cells == 1 and np.array_equal(kept.rows(slice(None)).numpy(), data.rows([0]).numpy())
    spilled.data.close()


def test_a_query_of_empty_cells_is_refused_in_one_line(bundled):
    # A query whose every cell is zero "annotated" 1,836 cells into one cluster at probability 1.0.
    human = read("baron_human_pancreas")
    zero = ad.AnnData(sp.csr_matrix(human.shape, dtype=np.float32), obs=human.obs[[]], var=human.var[[]])
    _one_line_error(lambda: bundled.transfer(zero, progress=False), "none of the 1,836 cells has expression")


# --- organism -------------------------------------------------------------------------------------------------

def test_a_mouse_query_without_query_organism_is_detected_and_mapped(bundled):
    # Mouse islets on the human reference without query_organism matched 82% of the genes by their upper-cased
    # symbols, unmapped, and sent 182 of 191 alpha cells to Unassigned without a word.
    mouse = read("baron_mouse_pancreas")
    with pytest.warns(ItClustWarning, match="query_organism not set: the gene names are mouse's"):
        result = bundled.transfer(mouse, progress=False)
    prov = result.provenance
    assert prov["query_organism"] == "mouse" and prov["organism_choice"]["how"] == "detected"
    assert prov["genes"]["ortholog_mapped"] > 10000 and "mouse's" in prov["warnings"][0]
    alpha = (mouse.obs["cell_type1"] == "alpha").to_numpy()
    assert (result.labels[alpha] == "alpha").mean() >= 0.9


def test_an_explicit_query_organism_wins_over_the_gene_names(bundled):
    from itclust_hub._query import prepare_query

    mouse = read("baron_mouse_pancreas")[:200].copy()
    prepare = lambda organism: prepare_query(  # noqa: E731
        mouse, genes=bundled.genes, gene_ids=bundled.gene_ids, organism=bundled.organism, recipe=bundled.recipe,
        query_organism=organism)
    as_human, as_mouse = prepare("Homo sapiens"), prepare(10090)
    assert as_human.alignment.ortholog_mapped is None and as_human.organism.how == "given"
    assert as_human.organism.doubtful and "look mouse's" in as_human.organism.message("query_organism", "", "")
    assert as_mouse.alignment.ortholog_mapped > 10000 and as_mouse.organism.message("query_organism", "", "") is None


@pytest.mark.parametrize("spelling, organism", [
    ("human", "human"), ("Homo sapiens", "human"), ("homo_sapiens", "human"), ("HS", "human"), ("9606", "human"),
    (9606, "human"), ("NCBITaxon:9606", "human"), ("Mouse", "mouse"), ("Mus musculus", "mouse"), ("mm", "mouse"),
    ("10090", "mouse"), ("taxid:10090", "mouse"), (" MUS  MUSCULUS ", "mouse")])
def test_usual_organism_spellings_are_accepted(spelling, organism):
    assert normalize_organism(spelling) == organism


def test_organisms_whose_genes_cannot_be_mapped_are_refused(bundled):
    message = _one_line_error(lambda: normalize_organism("martian", what="query_organism"), "query_organism 'martian'")
    assert "human (Homo sapiens, hs, 9606)" in message and "mouse (Mus musculus, mm, 10090)" in message
    human = read("baron_human_pancreas")[:50].copy()
    _one_line_error(lambda: bundled.transfer(human, query_organism="martian", progress=False), "query_organism 'martian'")
    _one_line_error(lambda: ih.train_reference(human, "cell_type1", "x", organism="martian"), "organism 'martian'")
    # a user's ortholog table adds its organisms
    table = pd.DataFrame({"human": ["GCG"], "zebrafish": ["gcga"]})
    assert normalize_organism("Zebrafish", also=table.columns) == "zebrafish"
    assert normalize_organism("Danio rerio", strict=False) == "danio rerio"  # a reference's recorded organism


def _names(n: int, style: str) -> list[str]:
    upper = [f"AB{chr(65 + i % 26)}{i}" for i in range(n)]
    return {"human": upper, "mouse": [s.capitalize() for s in upper], "lower": [s.lower() for s in upper],
            "ensembl_human": [f"ENSG{i:011d}" for i in range(n)],
            "ensembl_mouse": [f"ENSMUSG{i:011d}" for i in range(n)]}[style]


@pytest.mark.parametrize("style, fallback, organism, how, doubtful", [
    ("mouse", "human", "mouse", "detected", False),
    ("human", "human", "human", "detected", False),
    ("human", "mouse", "human", "detected", False),
    ("ensembl_mouse", "human", "mouse", "detected", False),
    ("ensembl_human", "mouse", "human", "detected", False),
    ("lower", "human", "human", "assumed", False),  # nothing recognisable: the fallback, silently
    ("mouse", "zebrafish", "zebrafish", "assumed", False),  # a reference the names cannot speak for
])
def test_the_organism_is_read_from_how_gene_names_are_written(style, fallback, organism, how, doubtful):
    names = _names(200, style)
    choice = choose_organism(None, fallback, pd.DataFrame(index=names), pd.Index(names))
    assert (choice.organism, choice.how, choice.doubtful) == (organism, how, doubtful)
    message = choice.message("query_organism", "mapped", "the reference's")
    assert (message is not None) == (how == "detected" and organism != fallback)


def test_too_few_gene_names_fall_back_and_say_so_only_when_doubtful():
    few_mouse, few_human = _names(10, "mouse"), _names(10, "human")
    doubtful = choose_organism(None, "human", pd.DataFrame(index=few_mouse), pd.Index(few_mouse))
    assert (doubtful.organism, doubtful.how, doubtful.doubtful) == ("human", "assumed", True)
    assert doubtful.message("query_organism", "", "the reference's").startswith("could not tell the organism")
    plain = choose_organism(None, "human", pd.DataFrame(index=few_human), pd.Index(few_human))
    assert plain.how == "assumed" and plain.message("query_organism", "", "the reference's") is None


def test_gene_names_are_read_from_the_column_that_holds_them():
    # var_names are numbers; the symbols are in a column (or named by gene_key); a column of repeated words
    # ("Gene Expression", "True") is no evidence
    symbols = _names(100, "mouse")
    var = pd.DataFrame({"symbol": symbols, "feature_types": "Gene Expression", "flag": "True"},
                       index=[str(i) for i in range(100)])
    assert choose_organism(None, "human", var, var.index).organism == "mouse"
    assert choose_organism(None, "human", var, var.index, gene_key="symbol").how == "detected"


def test_a_mouse_atlas_is_recorded_as_mouse_without_organism():
    mouse = read("baron_mouse_pancreas")[:250].copy()
    with pytest.warns(ItClustWarning, match="recorded as a mouse reference"):
        model = ih.train_reference(mouse, "cell_type1", "tiny-mouse", small_types="drop", pretrain_epochs=1,
                                   epochs=1, progress=False)
    assert model.organism == "mouse" and model.gene_ids is None


def test_the_cli_names_its_organism_options_and_reports_detection_and_empty_cells(bundled, tmp_path):
    mouse = read("baron_mouse_pancreas")[:300].copy()
    run = lambda *args: CliRunner().invoke(main, [str(a) for a in args])  # noqa: E731
    query = tmp_path / "mouse.h5ad"
    _with_rows(mouse, sp.csr_matrix((4, mouse.n_vars)), np.array([0, 10, 20, 30]), "zero").write_h5ad(query)
    out = tmp_path / "out.h5ad"
    bad = run("transfer", "pancreas-human", query, "-o", out, "--query-organism", "martian")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: --query-organism 'martian'")
    assert len(bad.stderr.strip().splitlines()) == 1 and not out.exists()
    bad = run("train", query, "--label-key", "x", "--name", "x", "-o", tmp_path / "ref", "--organism", "martian")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: --organism 'martian'")

    result = run("transfer", "pancreas-human", query, "-o", out, "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("Query organism: mouse (detected from its gene names") for line in lines)
    assert "Empty cells: 4 express none of the genes the reference reads" in result.stdout
    warnings = result.stderr.splitlines()
    assert any("the gene names are mouse's" in w for w in warnings)
    assert any("4 of 304 cells have no expression" in w for w in warnings)
    assert ad.read_h5ad(out).obs["itclust_empty"].sum() == 4
