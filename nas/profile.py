"""Size and cost of a neck: parameters, FLOPs and latency at a stated input size."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def neck_inputs(in_channels: Sequence[int], image_size: int, batch: int = 1) -> list[Tensor]:
    """Random C3..C5 for a square ``image_size`` image: (batch, C_i, ceil(S / 2**i), ...)."""
    sizes = [math.ceil(image_size / 2**level) for level in (3, 4, 5)]
    return [torch.randn(batch, c, s, s) for c, s in zip(in_channels, sizes)]


@torch.no_grad()
def count_flops(module: nn.Module, inputs: Sequence[Tensor]) -> int:
    """FLOPs of one forward (torch's FlopCounterMode: a multiply-add counts as 2)."""
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(list(inputs))
    module.train(was_training)
    return counter.get_total_flops()


@torch.no_grad()
def measure_latency(module: nn.Module, inputs: Sequence[Tensor], runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward in milliseconds, on the inputs' device."""
    was_training = module.training
    module.eval()
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        module(list(inputs))
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    module.train(was_training)
    return statistics.median(times) * 1e3
