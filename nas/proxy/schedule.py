"""The order of a training's batches and its learning-rate schedule, shared by the proxy's
training and the backbone's pretraining."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches of indices; one seeded permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """LambdaLR's factor: linear warm-up over ``warmup`` steps (at most a fifth), then cosine to 0."""
    warmup = min(warmup, max(1, steps // 5))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor
