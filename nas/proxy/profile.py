"""Size and cost of a neck: parameters, FLOPs and latency at a stated input size.

Inputs are C3..C5 (a list), or images (one tensor) for a neck that runs the backbone itself.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nas.settings import BACKBONE_WIDTHS

if TYPE_CHECKING:
    from nas.proxy.necks import NeckSpec


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def neck_inputs(in_channels: Sequence[int], image_size: int, batch: int = 1) -> list[Tensor]:
    """Random C3..C5 for a square ``image_size`` image: (batch, C_i, ceil(S / 2**i), ...)."""
    sizes = [math.ceil(image_size / 2**level) for level in (3, 4, 5)]
    return [torch.randn(batch, c, s, s) for c, s in zip(in_channels, sizes)]


def _call(module: nn.Module, inputs: Tensor | Sequence[Tensor]) -> object:
    return module(inputs if isinstance(inputs, Tensor) else list(inputs))


@torch.no_grad()
def count_flops(module: nn.Module, inputs: Tensor | Sequence[Tensor]) -> int:
    """FLOPs of one forward (torch's FlopCounterMode: a multiply-add counts as 2)."""
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        _call(module, inputs)
    module.train(was_training)
    return counter.get_total_flops()


@torch.no_grad()
def measure_latency(
    module: nn.Module, inputs: Tensor | Sequence[Tensor], runs: int = 10, warmup: int = 2
) -> float:
    """Median wall time of one forward in milliseconds, on the inputs' device."""
    was_training = module.training
    module.eval()
    cuda = (inputs if isinstance(inputs, Tensor) else inputs[0]).is_cuda
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        _call(module, inputs)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    module.train(was_training)
    return statistics.median(times) * 1e3


def profile_neck(
    neck: NeckSpec,
    in_channels: Sequence[int],
    out_channels: int,
    image_size: int,
    backbone: str | None = None,
    latency: bool = False,
) -> dict[str, float]:
    """``params``, ``flops`` and, with ``latency``, ``latency_ms`` (and ``gpu_latency_ms`` when a GPU
    is present) of ``neck`` built for C3..C5 of widths ``in_channels``, on one square
    ``image_size`` image's C3..C5.

    A neck that runs the backbone itself (``neck.needs_images``: RFP) is built around the body of
    ``backbone`` (default: the first with those widths) and fed the image; its figures are less
    one plain pass of that body -- what the neck adds to the backbone.
    """
    if not neck.needs_images:
        return _costs(neck.build(in_channels, out_channels), neck_inputs(in_channels, image_size), latency)
    from nas.nets.backbone import resnet_body

    backbone = backbone or backbone_with_widths(in_channels)
    if backbone is None:
        raise ValueError(
            f"{neck.name} runs the backbone itself, and no backbone has C3..C5 widths "
            f"{','.join(map(str, in_channels))}"
        )
    body = resnet_body(backbone)
    image = torch.randn(1, 3, image_size, image_size)
    plain = _costs(body, image, latency)
    total = _costs(neck.build(in_channels, out_channels, body=body), image, latency)
    return {key: max(0, total[key] - plain[key]) for key in total}


def backbone_with_widths(in_channels: Sequence[int]) -> str | None:
    """The first backbone (``nas.settings.BACKBONE_WIDTHS``) whose C3..C5 have widths ``in_channels``."""
    return next((name for name, widths in BACKBONE_WIDTHS.items() if widths == tuple(in_channels)), None)


def _costs(module: nn.Module, inputs: Tensor | Sequence[Tensor], latency: bool) -> dict[str, float]:
    costs: dict[str, float] = {"params": count_parameters(module), "flops": count_flops(module, inputs)}
    if latency:
        costs["latency_ms"] = round(measure_latency(module, inputs), 3)
        if torch.cuda.is_available():
            costs["gpu_latency_ms"] = round(measure_latency(module.cuda(), _to(inputs, "cuda")), 3)
            module.cpu()
    return costs


def _to(inputs: Tensor | Sequence[Tensor], device: str) -> Tensor | list[Tensor]:
    return inputs.to(device) if isinstance(inputs, Tensor) else [x.to(device) for x in inputs]
