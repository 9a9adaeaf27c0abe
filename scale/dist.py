"""Data-parallel training over processes started by torchrun: process group, batch shape, ranks agreeing.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distills a 17B teacher into a 1.1B
student on 128K-token windows, a job for many devices. This module is how train.py scales to
them with PyTorch's own engine (torch.distributed, DistributedDataParallel), as nanoGPT and
torchtune do:

- `start` / `stop`: join and leave the process group that torchrun describes in the
  environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); gloo on CPU, nccl on
  CUDA. Without torchrun there is no process group and every helper is a no-op (rank 0 of 1).
- `BatchShape`, `micro_batches`, `accumulate`: the one place that splits a step's global batch into ranks,
  then each rank's rows into micro-batches.
- `wrap` / `sync_unless`: the student in DDP (gradients averaged across ranks in backward, not
  on the micro-batches before the last); the frozen teacher is replicated, never wrapped.
- `sum_across_ranks`, `weight_spread`, `barrier`: metrics every rank agrees on (so all ranks
  take the same decisions), a check that the ranks' weights are the same, and a meeting point.

    torchrun --nproc_per_node 2 train.py --phase 2 --rope-base 500000 --threads 1
"""
import gc
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from config import fail


def launched_world_size() -> int:
    """Processes torchrun started for this run (1 without torchrun); readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, logs, runs the probes and writes checkpoints."""
    return rank() == 0


def start(args):
    """Join torchrun's process group (one per run) and give this rank its device; nothing without torchrun.

    args.device (already resolved by config.pick_device) becomes cuda:LOCAL_RANK on CUDA. The
    other ranks' stdout goes to /dev/null, so that each line is printed once; stderr stays.
    """
    if launched_world_size() == 1 or tdist.is_initialized():
        return
    cuda = args.device.startswith("cuda")
    backend = args.backend if args.backend != "auto" else "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        fail(f"--backend nccl needs CUDA devices, and this run is on --device {args.device} (gloo runs on CPU)")
    if cuda:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    tdist.init_process_group(backend, device_id=torch.device(args.device) if cuda else None)
    if not is_main():
        sys.stdout = open(os.devnull, "w")


@contextmanager
def process_group(args):
    """start(args) ... stop(): the process group for the length of the block (nothing without torchrun)."""
    start(args)
    try:
        yield
    finally:
        stop()


def stop():
    """Leave the process group, every rank together, while the interpreter is fully alive.

    A rank that tore down its gloo connections while its peer still had work in flight on them (the DDP
    reducer's last all-reduce, the peer's final barrier) could abort at exit ("terminate called without an
    active exception", exit -6), and torchrun then reports the run failed. So: free what still holds the
    group (the DDP wrapper), meet at a barrier (no collective left in flight anywhere), destroy the group,
    and meet once more through the store, so that no rank closes its sockets while another is still
    destroying its group.
    """
    if not tdist.is_initialized():
        return
    gc.collect()  # the DDP wrapper and its reducer, which hold the group
    tdist.barrier()
    store = _store()
    tdist.destroy_process_group()
    if store is None:
        return
    try:  # the store may be gone already if the rank that hosts it left first: then there is no one to wait for
        n = launched_world_size()
        store.add("left", 1)
        deadline = time.monotonic() + 60
        while store.add("left", 0) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    except (RuntimeError, OSError):
        pass


def _store():
    """The rendezvous key-value store of the default group (None if it cannot be had)."""
    try:
        return tdist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


@dataclass(frozen=True)
class BatchShape:
    """One optimizer step's windows: the global batch, split over ranks, then into micro-batches on each rank.

    Rank r takes rows [r * per_rank, (r + 1) * per_rank) of the global batch that one process
    would draw for the step, and feeds them as `grad_accum` micro-batches of `micro` windows; so
    N ranks x K micro-batches see the same windows as 1 process, whatever N and K.
    """
    global_batch: int  # windows per optimizer step, all ranks together (--batch-size)
    world: int = 1  # ranks
    grad_accum: int = 1  # micro-batches per rank and step (--grad-accum)

    def __post_init__(self):
        if self.global_batch % (self.world * self.grad_accum):
            raise ValueError(f"{self.global_batch} windows per step do not split into {self.world} ranks x "
                             f"{self.grad_accum} micro-batches (--grad-accum)")

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world

    @property
    def micro(self) -> int:
        return self.per_rank // self.grad_accum

    def rows(self, rank: int) -> slice:
        return slice(rank * self.per_rank, (rank + 1) * self.per_rank)


def micro_batches(batch, grad_accum: int):
    """A rank's rows (x, y, pos, doc, ans), each (per_rank, T), as grad_accum micro-batches of BatchShape.micro
    rows each, in row order: [(x, y, pos, doc, ans) of rows 0..micro-1, ...]."""
    return list(zip(*(t.chunk(grad_accum) for t in batch)))


def accumulate(model, batch, grad_accum, loss_fn):
    """Forward and backward of loss_fn over this rank's rows in grad_accum micro-batches: each loss divided by
    grad_accum, DDP's gradient all-reduce on the last micro-batch only. The step's optimizer update follows.

    loss_fn(micro) -> (loss, ce, kl, correct answers, answers), 0-dim tensors (train.training_loss). Returns
    [loss, ce, kl, correct, answers] of the global batch: the losses averaged over micro-batches and ranks, the
    answers counted over all of them; the same on every rank.
    """
    stats = 0
    for i, micro in enumerate(micro_batches(batch, grad_accum)):  # K x (x, y, ...), (B / ranks / K, T) each
        with sync_unless(model, accumulating=i < grad_accum - 1):
            loss, ce, kl, correct, answers = loss_fn(micro)
            (loss / grad_accum).backward()
        stats = stats + torch.stack([loss.detach() / grad_accum, ce.detach() / grad_accum,
                                     kl.to(loss.device) / grad_accum, correct, answers])
    stats = sum_across_ranks(stats)
    return torch.cat([stats[:3] / world_size(), stats[3:]])


def wrap(model, device):
    """The student in DDP under torchrun (the model itself otherwise).

    DDP broadcasts rank 0's weights and buffers once, then averages gradients across ranks during
    backward. forward_sync_buffers=False: no broadcast before each forward, as the only buffer is
    RoPE's inv_freq, which no step changes.
    """
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def sync_unless(model, accumulating: bool):
    """DDP's no_sync while gradients are still being accumulated (micro-batches before the last)."""
    return model.no_sync() if accumulating and isinstance(model, DistributedDataParallel) else nullcontext()


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks, the same on every rank (gloo and nccl: a ring or tree all-reduce)."""
    if world_size() > 1:
        t = t.clone()
        tdist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (one all-reduce of one number under torchrun)."""
    if not tdist.is_initialized():
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if tdist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def weight_spread(model) -> float:
    """max |w_rank - w_other rank| over every weight: 0.0 when the ranks hold the same model (as DDP must keep)."""
    if world_size() == 1:
        return 0.0
    spread = 0.0
    for p in model.parameters():
        hi, lo = p.detach().clone(), p.detach().clone()
        tdist.all_reduce(hi, tdist.ReduceOp.MAX)
        tdist.all_reduce(lo, tdist.ReduceOp.MIN)
        spread = max(spread, (hi - lo).abs().max().item())
    return spread


def barrier():
    """Wait until every rank gets here (e.g. rank 0 has written the checkpoint the others will read)."""
    if world_size() > 1:
        tdist.barrier()
