"""torch.distributed for the long jobs (router training, large sample sets), and a no-op when run as one process.

Launch any `l2c` command with torchrun to spread it over processes, GPUs and nodes:

    torchrun --nproc_per_node 8 -m l2c sample --model DiT-XL/2 --ckpt ... --seeds 0-49999 --npz samples.npz

Without torchrun (no WORLD_SIZE in the environment) everything below reports rank 0 of 1 and does nothing, so the
same code runs on a laptop CPU. NCCL is used when the processes drive CUDA devices, gloo otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> str:
    """Join the process group torchrun describes; returns the device this process should use.

    `--device cuda` becomes `cuda:LOCAL_RANK`, so each process drives its own GPU.
    """
    if not launched_with_torchrun():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_processes(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over all processes (identity in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective: every process must call it)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    failures = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(failures)
    return int(failures.item()) == 0


def gather_strided(local: torch.Tensor, total: int) -> torch.Tensor:
    """The (total,) values whose items i = rank, rank + world, ... this process computed (`local`), from every
    process, in item order: a sum over them is then the same sum, in the same order, as in one process."""
    world = world_size()
    if world == 1:
        return local
    counts = [len(range(r, total, world)) for r in range(world)]
    parts = [torch.empty(n, dtype=local.dtype, device=local.device) for n in counts]
    padded = max(counts)
    # all_gather needs equal sizes: pad to the longest share, then drop the padding.
    buffers = [torch.zeros(padded, dtype=local.dtype, device=local.device) for _ in range(world)]
    mine = torch.zeros(padded, dtype=local.dtype, device=local.device)
    mine[: len(local)] = local
    dist.all_gather(buffers, mine)
    out = torch.empty(total, dtype=local.dtype, device=local.device)
    for r, (buffer, n) in enumerate(zip(buffers, counts)):
        parts[r] = buffer[:n]
        out[r::world] = parts[r]
    return out
