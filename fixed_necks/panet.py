"""PANet -- Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018.

An FPN (RetinaNet's P6/P7) followed by a bottom-up path augmentation that shortens the way
from low-level detail to the top: N3 = P3 and N(i+1) = conv3x3(conv3x3_stride2(N(i)) + P(i+1)).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from fixed_necks.fpn import FPN, fpn_genotype
from nas.genotype import Genotype, Node
from nas.nets.builder import OUTPUT_NAMES, Features
from nas.nets.ops import conv_norm


class BottomUpStep(nn.Module):
    """N(i+1) = conv3x3(conv3x3_stride2(N(i)) + P(i+1)).

    Shapes: n (N, C, H, W) and p (N, C, ceil(H/2), ceil(W/2)) -> like p.
    """

    def __init__(self, channels: int, norm: str | None) -> None:
        super().__init__()
        self.down = conv_norm(channels, channels, 3, stride=2, norm=norm)
        self.fuse = conv_norm(channels, channels, 3, norm=norm)

    def forward(self, n: Tensor, p: Tensor) -> Tensor:
        return self.fuse(self.down(n) + p)


class PANet(nn.Module):
    """C3..C5 -> OrderedDict N3..N7 (named P3..P7) of ``out_channels``."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, norm: str | None = None) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.fpn = FPN(in_channels, out_channels, extra="p6p7", norm=norm)
        self.bottom_up = nn.ModuleList(BottomUpStep(out_channels, norm) for _ in range(4))

    def forward(self, features: Features) -> OrderedDict[str, Tensor]:
        p = list(self.fpn(features).values())
        n = [p[0]]
        for step, p_next in zip(self.bottom_up, p[1:]):
            n.append(step(n[-1], p_next))
        return OrderedDict(zip(OUTPUT_NAMES, n))


def panet_genotype() -> Genotype:
    """FPN's nodes 5..14 (outputs P3..P7 = 10..14), then the bottom-up nodes 15..18 = N4..N7."""
    fpn = fpn_genotype("p6p7")
    bottom_up = [
        Node(level=4, inputs=(10, 11), down="conv", post="conv"),
        Node(level=5, inputs=(15, 12), down="conv", post="conv"),
        Node(level=6, inputs=(16, 13), down="conv", post="conv"),
        Node(level=7, inputs=(17, 14), down="conv", post="conv"),
    ]
    return Genotype.create(list(fpn.nodes) + bottom_up, outputs=[10, 15, 16, 17, 18], name="panet")
