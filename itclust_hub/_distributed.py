"""How the processes of source training share the work: :class:`Replica` (the only process, every row) or
:class:`DistributedReplica` (one of several processes: DistributedDataParallel, gloo on CPU, nccl on GPU,
each reading its share of every minibatch of a backed atlas), and :func:`launch`, which starts the processes
on this machine as ``torchrun --standalone`` does (``itclust-hub train --processes N``).

Inside a torchrun script of your own (several machines, say), ``train_reference(anndata.read_h5ad(path,
backed="r"), ..., distributed=True)`` joins torchrun's process group instead.
"""

from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._atlas import Shard
from ._errors import ItClustError


class Replica:
    """This process's part in training: here the only process, training on every row.

    Under ``torchrun`` a :class:`DistributedReplica` takes its place: each process reads its share of every
    minibatch, sums are added up across processes and gradients averaged.
    """

    rank = 0
    world = 1
    device = torch.device("cpu")

    def take(self, index: np.ndarray) -> np.ndarray:
        """This process's rows of a minibatch."""
        return index[self.rank :: self.world]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all processes."""
        return tensor

    def reduce(self, array: np.ndarray) -> np.ndarray:
        """:meth:`all_sum` for a NumPy array."""
        return self.all_sum(torch.from_numpy(array)).cpu().numpy()

    def shard(self) -> Shard:
        """This process's share of the chunks of a pass over the atlas."""
        return Shard(self.rank, self.world, self.reduce)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to train through (DistributedDataParallel under torchrun)."""
        return module


class DistributedReplica(Replica):
    """One of the processes of a torchrun job (or of :func:`launch`); joins the process group (from
    torchrun's environment) if the caller has not."""

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


def launch(processes: int, function, *args) -> list:
    """Run ``function(*args)`` in ``processes`` new processes on this machine, with the environment torchrun
    gives them (rank, world size, rendezvous; one OpenMP thread each unless ``OMP_NUM_THREADS`` is set), and
    return what each returned, by rank. ``function`` must be importable by name (it is pickled); a process
    that fails is a one-line error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    set_threads = "OMP_NUM_THREADS" not in os.environ
    if set_threads:
        os.environ["OMP_NUM_THREADS"] = "1"
    for logger in loggers:  # the launcher's own log lines; a failure is reported below in one line
        logger.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, function)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        raise ItClustError(f"process {rank} of {processes} failed: {message or f'exit status {failure.exitcode}'}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if set_threads:
            os.environ.pop("OMP_NUM_THREADS", None)
    return [results[rank] for rank in range(processes)]
