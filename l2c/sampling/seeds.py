"""Per-image random streams (edm2's StackedRandomGenerator): image i's noise depends only on its seed."""

from __future__ import annotations

import re

import torch

MAX_SEED = 1 << 63  # seeds are in [0, 2^63)


class StackedRandomGenerator:
    """One torch.Generator per image; rows of a batch are drawn from their own generator.

    `copies` > 1 is for batched guidance, where the sampler state holds each image `copies` times ([x_c; x_u]):
    rows i, N+i, 2N+i ... all draw from seed i, one after the other.
    """

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        # torch seeds are 64-bit; a seed outside [0, 2^63) would wrap onto another seed's stream (two seeds, one image)
        bad = [int(s) for s in seeds if not 0 <= int(s) < MAX_SEED]
        if bad:
            raise ValueError(f"seed {bad[0]} is outside 0 .. 2^63-1; each seed must name its own random stream")
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape, copies: int = 1, dtype=torch.float32, device="cpu") -> torch.Tensor:
        n = len(self.generators)
        if shape[0] != n * copies:
            raise ValueError(f"batch of {shape[0]} rows for {n} seeds x {copies} copies")
        rows = [torch.randn((copies, *shape[1:]), generator=g, dtype=dtype, device=device) for g in self.generators]
        return torch.stack(rows, dim=1).reshape(shape)  # (copies, N, ...) -> copy-major rows

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, copies=x.shape[0] // len(self.generators), dtype=x.dtype, device=x.device)


def parse_int_list(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"range {part!r} ends before it starts")
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ValueError(f"cannot parse {part!r} in {text!r}; use e.g. '0-7' or '1,5,9'")
    return out
