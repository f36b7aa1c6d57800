"""FPN -- Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.

Lateral 1x1 convs bring C3..C5 to one width; a top-down path adds each coarser map,
nearest-upsampled x2, to the lateral below it; a 3x3 conv smooths each sum into P3..P5.
P6 and P7 come from the output P5, either as in RetinaNet (P6 = 3x3 stride-2 conv,
P7 = ReLU then 3x3 stride-2 conv) or as in Faster R-CNN (stride-2 subsampling, torchvision's
``LastLevelMaxPool``; P7 subsamples P6 once more).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from nas.genotype import Genotype, Node
from nas.nets.builder import OUTPUT_NAMES, Features, backbone_features
from nas.nets.ops import conv_norm

EXTRA_LEVELS = ("p6p7", "maxpool")


class FPN(nn.Module):
    """C3..C5 -> OrderedDict P3..P7 of ``out_channels``; ``extra`` is ``p6p7`` or ``maxpool``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra: str = "p6p7",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if extra not in EXTRA_LEVELS:
            raise ValueError(f"extra must be one of {EXTRA_LEVELS}, got {extra!r}")
        self.out_channels = out_channels
        self.extra = extra
        self.lateral = nn.ModuleList(conv_norm(c, out_channels, 1, norm=norm) for c in in_channels)
        self.output = nn.ModuleList(conv_norm(out_channels, out_channels, 3, norm=norm) for _ in in_channels)
        if extra == "p6p7":
            self.p6 = conv_norm(out_channels, out_channels, 3, stride=2, norm=norm)
            self.p7 = conv_norm(out_channels, out_channels, 3, stride=2, norm=norm)

    def forward(self, features: Features) -> OrderedDict[str, Tensor]:
        return self.top_down(self.lateral_maps(backbone_features(features)))

    def lateral_maps(self, c: list[Tensor]) -> list[Tensor]:
        """C3..C5 -> M3..M5: the lateral 1x1 convs, each (N, out_channels, H_l, W_l)."""
        return [lateral(x) for lateral, x in zip(self.lateral, c)]

    def top_down(self, laterals: list[Tensor]) -> OrderedDict[str, Tensor]:
        """M3..M5 -> OrderedDict P3..P7: the top-down sums, the 3x3 smoothing convs, P6 and P7."""
        inner = laterals[-1:]
        for lateral in reversed(laterals[:-1]):
            inner.insert(0, lateral + F.interpolate(inner[0], size=lateral.shape[-2:], mode="nearest"))
        p3, p4, p5 = (conv(x) for conv, x in zip(self.output, inner))
        if self.extra == "p6p7":
            p6 = self.p6(p5)
            p7 = self.p7(F.relu(p6))
        else:
            p6 = F.max_pool2d(p5, 1, 2)
            p7 = F.max_pool2d(p6, 1, 2)
        return OrderedDict(zip(OUTPUT_NAMES, (p3, p4, p5, p6, p7)))


def fpn_genotype(extra: str = "p6p7") -> Genotype:
    """FPN as data. Pool: 0..2 = C3..C5 (no input P6/P7); nodes 5..7 laterals of C3..C5,
    8 and 9 the top-down sums at P4 and P3, 10..12 the smoothed P3..P5, 13 and 14 P6 and P7."""
    p6_down, p7_down = ("conv", "relu_conv") if extra == "p6p7" else ("subsample", "subsample")
    nodes = [
        Node(level=3, inputs=(0,)),
        Node(level=4, inputs=(1,)),
        Node(level=5, inputs=(2,)),
        Node(level=4, inputs=(6, 7)),
        Node(level=3, inputs=(5, 8)),
        Node(level=3, inputs=(9,), post="conv"),
        Node(level=4, inputs=(8,), post="conv"),
        Node(level=5, inputs=(7,), post="conv"),
        Node(level=6, inputs=(12,), down=p6_down),
        Node(level=7, inputs=(13,), down=p7_down),
    ]
    name = "fpn" if extra == "p6p7" else "fpn_maxpool"
    return Genotype.create(nodes, outputs=[10, 11, 12, 13, 14], name=name)
