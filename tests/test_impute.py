"""Missing-gene imputation: the folded first layer equals filling the genes in, and on a held-out donor the
filled-in values are closer to the measured ones than the scaled mean a query would otherwise have there."""

import numpy as np
import torch

import itclust_hub as ih
from itclust_hub._impute import fill_missing, gene_loadings, impute_missing
from itclust_hub._network import Encoder
from itclust_hub._query import prepare_query

from _data import read


def test_folded_first_layer_equals_filled_input():
    torch.manual_seed(0)
    cells = torch.randn(50, 6) @ torch.randn(6, 40)  # rank-6 expression over 40 genes
    loadings, noise = gene_loadings((cells.T @ cells).double().numpy(), 50, n_components=6)
    loadings = torch.from_numpy(loadings)
    encoder = Encoder(40, [16, 4])
    present = torch.rand(40) < 0.4
    measured = cells * present  # a query leaves its missing genes at the scaled mean, 0
    folded = impute_missing(encoder, loadings, noise, present.numpy())
    with torch.no_grad():
        expected = encoder(fill_missing(cells, present, loadings, noise))
        assert torch.allclose(folded(measured), expected, atol=1e-4)
        assert not torch.allclose(encoder(measured), expected, atol=1e-2)  # imputation changes the embedding
    assert impute_missing(encoder, loadings, noise, np.ones(40, bool)) is encoder


def _scaled(model, adata) -> torch.Tensor:
    prepared = prepare_query(adata, genes=model.genes, gene_ids=model.gene_ids, organism=model.organism,
                             recipe=model.recipe, scale="reference", memory_budget=2**29,
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
