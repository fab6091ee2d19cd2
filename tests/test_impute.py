"""Missing-gene imputation: the imputing first layer equals filling the genes in (and trains the reference
genes' weights), on a held-out donor the filled-in values are closer to the measured ones than the scaled
mean a query would otherwise have there, and a panel's other genes (context genes) lift its accuracy."""

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

import itclust_hub as ih
from itclust_hub import ItClustError
from itclust_hub._impute import fill_missing, gene_loadings, impute_missing, latent_map
from itclust_hub._network import Encoder
from itclust_hub._query import MIN_OVERLAP, prepare_query
from itclust_hub._report import gene_overlap_text, warnings

from _data import read, small_reference


def test_imputing_first_layer_equals_filled_input():
    torch.manual_seed(0)
    cells = torch.randn(50, 6) @ torch.randn(6, 40)  # rank-6 expression over 40 genes
    loadings, noise = gene_loadings((cells.T @ cells).double().numpy(), 50, n_components=6)
    loadings = torch.from_numpy(loadings)
    encoder = Encoder(40, [16, 4])
    present = torch.rand(40) < 0.4
    measured = cells * present  # a query leaves its missing genes at the scaled mean, 0
    imputing = impute_missing(encoder, loadings, noise, present.numpy())
    with torch.no_grad():
        expected = encoder(fill_missing(cells, present, loadings, noise))
        assert torch.allclose(imputing(measured), expected, atol=1e-4)
        assert not torch.allclose(encoder(measured), expected, atol=1e-2)  # imputation changes the embedding
    assert impute_missing(encoder, loadings, noise, np.ones(40, bool)) is encoder


def test_context_genes_are_read_after_the_reference_genes_and_only_reference_weights_train():
    torch.manual_seed(0)
    factors = torch.randn(50, 6)
    cells, others = factors @ torch.randn(6, 40), factors @ torch.randn(6, 30)
    loadings, noise = gene_loadings((cells.T @ cells).double().numpy(), 50, n_components=6)
    loadings = torch.from_numpy(loadings)
    latent = cells @ latent_map(loadings, torch.full((40,), noise))
    context = torch.linalg.lstsq(latent, others).solution.T, torch.full((30,), 0.1)  # loadings, noise
    encoder = Encoder(40, [16, 4])
    present = torch.rand(40) < 0.3
    imputing = impute_missing(encoder, loadings, noise, present.numpy(), context)
    inputs = torch.cat([cells * present, others], dim=1)
    filled = cells * present
    both = torch.cat([loadings[present], context[0]])
    estimate = torch.cat([cells[:, present], others], dim=1) @ latent_map(both, torch.cat([torch.full((int(present.sum()),), noise), context[1]]))
    filled[:, ~present] = estimate @ loadings[~present].T
    with torch.no_grad():
        assert torch.allclose(imputing(inputs), encoder(filled), atol=1e-4)
    assert [p.shape for p in imputing.parameters()] == [p.shape for p in encoder.parameters()]
    imputing(inputs).sum().backward()
    assert imputing.layers[0].linear.weight.grad[:, ~present].abs().sum() > 0  # missing genes' weights train too


def _scaled(model, adata, scale="reference") -> torch.Tensor:
    prepared = prepare_query(adata, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                             recipe=model.recipe, scale=scale, memory_budget=2**29,
                             reference_stats=(model.gene_mean.numpy(), model.gene_std.numpy()))
    return prepared.data.rows(slice(0, prepared.data.n_cells)).double()


def test_imputation_beats_the_mean_on_a_held_out_donor():
    model = ih.ItClust.from_pretrained("pancreas-human")
    human = read("baron_human_pancreas")
    train = _scaled(model, human[human.obs["donor"] != "human3"])
    loadings, noise = gene_loadings((train.T @ train).numpy(), len(train))
    held_out = _scaled(model, human[human.obs["donor"] == "human3"]).float()
    rng = np.random.default_rng(0)
    for share in (0.25, 0.1):
        present = torch.as_tensor(rng.random(held_out.shape[1]) < share)
        filled = fill_missing(held_out * present, present, torch.from_numpy(loadings), noise)
        error = ((filled - held_out)[:, ~present] ** 2).mean().item()
        baseline = (held_out[:, ~present] ** 2).mean().item()
        print(f"{share:.0%} of genes: squared error {error:.3f} imputed, {baseline:.3f} at the mean")
        assert error < 0.95 * baseline


def test_context_genes_lift_a_panels_accuracy_on_a_held_out_donor():
    model = small_reference()  # trained without human3
    human = read("baron_human_pancreas")
    held_out = human[human.obs["donor"] == "human3"].copy()
    panel = held_out[:, np.random.default_rng(0).random(held_out.n_vars) < 0.1].copy()
    without = copy.copy(model)
    without.context = None
    results = [m.transfer(panel, progress=False) for m in (model, without)]
    truth = panel.obs["cell_type1"].astype(str)
    accuracy = [accuracy_score(truth, r.obs["nearest_label"]) for r in results]
    print(f"{results[0].provenance['genes']['n_overlap']} reference and {results[0].provenance['context_genes']} "
          f"context genes measured: accuracy {accuracy[0]:.3f} with the context genes, {accuracy[1]:.3f} without")
    assert results[1].provenance["context_genes"] == 0
    said = [gene_overlap_text(r.provenance) for r in results]  # the CLI's and the report's gene line
    assert f"{results[0].provenance['context_genes']:,} other genes it measures" in said[0] and "context" not in said[1]
    assert any("missing genes are filled in from the measured ones" in line for line in warnings(results[0]))
    assert accuracy[0] > accuracy[1]


def test_a_panels_cells_are_normalised_to_their_whole_transcriptome_depth():
    model = small_reference()  # trained without human3
    human = read("baron_human_pancreas")
    held_out = human[human.obs["donor"] == "human3"].copy()
    panel = held_out[:, np.random.default_rng(1).random(held_out.n_vars) < 0.1].copy()
    kwargs = dict(genes=model.genes, gene_ids=model.gene_ids, organism=model.organism, recipe=model.recipe,
                  context=model._panel_inputs()["context"])
    whole = prepare_query(held_out, **kwargs).data.X  # every gene measured: normalised by its full depth
    prepared = [prepare_query(panel, shares=s, **kwargs) for s in (model._panel_inputs()["shares"], None)]
    columns = np.flatnonzero(prepared[0].alignment.present)  # the reference genes the panel measures
    errors = [np.abs(p.data.X[:, columns] - whole[:, columns]).mean() for p in (prepared[0], prepared[1])]
    print(f"panel holds {prepared[0].depth_share:.1%} of a reference cell's expression; mean absolute error of "
          f"its log-normalised values: {errors[0]:.3f} with its depth estimated, {errors[1]:.3f} over the panel")
    assert prepared[0].context_present.any() and prepared[1].depth_share is None
    assert 0 < prepared[0].depth_share < 0.5
    said = gene_overlap_text(prepared[0].summary())  # the CLI's and the report's gene line
    assert f"hold {prepared[0].depth_share:.0%} of a reference cell's expression" in said
    assert errors[0] < 0.5 * errors[1]


def _marker_panel(adata, genes, size: int) -> list[str]:
    """The ``size`` of ``genes`` whose mean log expression differs most between ``adata``'s cell types."""
    import scanpy as sc

    lognorm = adata[:, adata.var_names.isin(genes)].copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    means = sc.get.aggregate(lognorm, by="cell_type1", func="mean").to_df(layer="mean")
    return list((means.max() - means.min()).sort_values(ascending=False).index[:size])


def test_a_220_gene_panel_is_read_through_its_context_genes_and_a_panel_without_them_is_refused():
    model = small_reference()  # trained without human3
    human = read("baron_human_pancreas")
    held_out = human[human.obs["donor"] == "human3"].copy()
    least = int(np.ceil(MIN_OVERLAP * len(model.genes)))  # transfer's default min_overlap
    network = _marker_panel(held_out, model.genes, least - 30)  # under the minimum on the reference genes alone
    context = _marker_panel(held_out, model.context_genes, 220 - len(network))
    panel = held_out[:, held_out.var_names.isin(network + context)].copy()
    with pytest.warns(UserWarning, match=rf"only {len(network)} of the reference's {len(model.genes)} genes"):
        result = model.transfer(panel, progress=False)
    genes = result.provenance["genes"]
    accuracy = accuracy_score(panel.obs["cell_type1"].astype(str), result.obs["nearest_label"])
    print(f"{panel.n_vars}-gene panel: {genes['n_overlap']} reference and {result.provenance['context_genes']} "
          f"context genes, accuracy {accuracy:.3f}")
    assert genes["n_overlap"] == len(network) < least and result.provenance["context_genes"] == len(context)
    assert accuracy > 0.8
    too_few = held_out[:, held_out.var_names.isin(network[:10] + context[:20])].copy()
    with pytest.raises(ItClustError, match=rf"only 30 genes the reference reads .* below the minimum {least}"):
        model.transfer(too_few, progress=False)
