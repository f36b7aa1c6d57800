"""What a proxy trial is configured by: the detectors, backbones, RoI modes and budgets it can
use, and ``ProxySettings``; and the norms a neck can be built with.

Torch-free on purpose: the command line builds its options from these tables, and ``status``,
``report`` and ``dashboard`` read a run's settings, without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

NORMS = ("bn", "gn", "none")  # after every conv of a neck, see nas.nets.ops
DETECTORS = ("atss", "retinanet", "fasterrcnn")  # one-stage with ATSS or IoU assignment, two-stage
ROI_MODES = ("fpn", "panet", "soft")  # Faster R-CNN's RoI features, see nas.proxy.roi
# C3..C5 widths of the torchvision ResNets a proxy can use (nas.nets.backbone builds them).
BACKBONE_WIDTHS: dict[str, tuple[int, int, int]] = {
    "resnet10": (128, 256, 512),
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
}


@dataclass(frozen=True)
class Budget:
    """Optimiser steps, evaluations spread evenly over them (the last at the end), batch size."""

    steps: int
    evaluations: int
    batch_size: int = 16


BUDGETS = {
    "quick": Budget(steps=30, evaluations=1, batch_size=8),
    "default": Budget(steps=500, evaluations=2),
    "full": Budget(steps=2000, evaluations=4),
    "long": Budget(steps=8000, evaluations=4),  # calibration's reference (nas.search.calibrate)
}


def budget_of(name: str) -> Budget:
    """A budget by its name in ``BUDGETS``, or by its steps ("300": 300 steps, batch 16, an
    evaluation every ~250 steps, 1 to 4 of them). ValueError for anything else."""
    if name in BUDGETS:
        return BUDGETS[name]
    if name.isdigit() and int(name) > 0:
        return Budget(steps=int(name), evaluations=max(1, min(4, round(int(name) / 250))))
    raise ValueError(f"budget {name!r}: neither a number of steps nor one of {', '.join(BUDGETS)}")


@dataclass(frozen=True)
class ProxySettings:
    """How a proxy trial trains: everything but the neck, the data and the seed."""

    detector: str = "atss"
    backbone: str = "resnet10"
    backbone_checkpoint: str | None = None
    freeze_backbone: bool = True
    image_size: int = 128
    width: int = 64
    head_convs: int = 2
    budget: str = "default"
    roi: str = "fpn"  # Faster R-CNN's RoI features (ROI_MODES); a neck's own ``roi`` wins
    # FPN's best at the default budget of 1e-3, 3e-3 and 6e-3 (README, "What the proxy measures")
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
