"""A torchvision ResNet body with a neck on top: what torchvision's detectors call a backbone."""

from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

RESNET_WIDTHS = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
}


class BackboneWithNeck(nn.Module):
    """Image batch (N, 3, H, W) -> the neck's OrderedDict P3..P7; ``out_channels`` for the heads."""

    def __init__(self, body: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels: int = neck.out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.neck(self.body(images))


def resnet_body(name: str = "resnet18") -> nn.Module:
    """A randomly initialised torchvision ResNet returning C3..C5 (layer2..layer4)."""
    if name not in RESNET_WIDTHS:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(RESNET_WIDTHS)})")
    resnet = getattr(torchvision.models, name)(weights=None)
    return IntermediateLayerGetter(resnet, {"layer2": "C3", "layer3": "C4", "layer4": "C5"})
