"""Source training across processes started by ``torchrun``: DistributedDataParallel (gloo on CPU, nccl
on GPU) over a backed (on-disk) AnnData, so an atlas larger than one machine's memory trains.

Every process opens the same ``.h5ad`` with ``backed="r"``, scans its own share of the chunks for the QC,
gene-selection and scaling statistics (summed across processes), then reads only its share of the rows of
every minibatch; gradients are averaged by DistributedDataParallel. Launch with::

    torchrun --nproc_per_node=4 -m itclust_hub._distributed atlas.h5ad --label-key cell_type \\
        --name my-atlas -o my-atlas/

or, inside your own torchrun script, ``train_reference(anndata.read_h5ad(path, backed="r"), ...,
distributed=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._artifact import REFERENCE_FILES
from ._errors import ItClustError, cli_words
from ._outputs import check_output_folder
from ._preprocess import Recipe
from ._train import Replica, train_reference


class DistributedReplica(Replica):
    """One of the processes of a torchrun job; joins the process group (from torchrun's environment) if
    the caller has not."""

    def __init__(self):
        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ItClustError("distributed training needs processes started by torchrun (RANK and WORLD_SIZE "
                                   "are unset); run it under torchrun --nproc_per_node=N")
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        dist.all_reduce(tensor)
        return tensor

    def wrap(self, module: nn.Module) -> nn.Module:
        # Each stage trains part of the module (one layer and its decoder, then the autoencoder, then the
        # encoder and centroids), so some parameters get no gradient in a given stage.
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def _arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m itclust_hub._distributed",
                                     description="Train a reference data-parallel from a backed .h5ad atlas.")
    parser.add_argument("atlas", help=".h5ad file with raw counts in X")
    parser.add_argument("--label-key", required=True, help="obs column with the cell-type labels")
    parser.add_argument("--name", required=True, help="reference name")
    parser.add_argument("-o", "--output", required=True, help="reference folder to write (by the first process)")
    parser.add_argument("--organism", help="organism of the atlas (default: detected from the gene names)")
    parser.add_argument("--tissue", default="unknown")
    parser.add_argument("--small-types", choices=["error", "drop"], default="error")
    parser.add_argument("--min-cells-per-type", type=int, default=2)
    parser.add_argument("--n-top-genes", type=int,
                        help=f"highly variable genes (default: the recipe's {Recipe().n_top_genes})")
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256, help="global minibatch, split across processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace the reference files in the output folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Entry point for ``torchrun ... -m itclust_hub._distributed``; returns the exit status."""
    import anndata

    args = _arguments(argv)
    try:
        recipe = Recipe() if args.n_top_genes is None else Recipe(n_top_genes=args.n_top_genes)
        if not os.path.isfile(args.atlas):
            raise ItClustError(f"{args.atlas} does not exist")
        check_output_folder(args.output, REFERENCE_FILES, force=args.force, inputs=[args.atlas])
        adata = anndata.read_h5ad(args.atlas, backed="r")
        model = train_reference(
            adata, args.label_key, args.name, organism=args.organism, tissue=args.tissue, recipe=recipe,
            min_cells_per_type=args.min_cells_per_type, small_types=args.small_types,
            pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            distributed=True,
        )
        if dist.get_rank() == 0:
            path = model.save_pretrained(args.output, force=args.force)
            print(f"Trained {model.name} on {dist.get_world_size()} processes: {model.config['n_cells']} cells, "
                  f"{len(model.cell_types)} cell types, {len(model.genes)} genes; saved to {path}")
        dist.barrier()
    except ItClustError as err:
        print(f"Error: {cli_words(str(err))}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
