"""BiFPN -- Tan, Pang & Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020.

P6 = max-pool(BN(1x1 conv(C5))), P7 = max-pool(P6). Each BiFPN layer runs a top-down path
(P6_td, P5_td, P4_td, P3_out) and a bottom-up path (P4_out .. P7_out); each node fuses its
inputs by fast normalised fusion, sum(w_i x_i) / (eps + sum w_j) with ReLU'd weights, then
swish -> depthwise-separable 3x3 conv -> BN. Inputs are resampled by a 1x1 conv + BN where
widths differ, nearest upsampling and 3x3 stride-2 max-pooling. Layers are stacked ``repeats``
times (EfficientDet-D0: 64 channels, 3 repeats).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fixed_necks.stacked import StackedCells
from nas.genotype import Genotype, Node
from nas.nets.ops import Resample, WeightedFusion, post_op

# EfficientDet's node list: (level, inputs) with P3..P7 = 0..4 and new nodes numbered from 5.
BIFPN_NODES = (
    (6, (3, 4)),  # 5: P6_td
    (5, (2, 5)),  # 6: P5_td
    (4, (1, 6)),  # 7: P4_td
    (3, (0, 7)),  # 8: P3_out
    (4, (1, 7, 8)),  # 9: P4_out
    (5, (2, 6, 9)),  # 10: P5_out
    (6, (3, 5, 10)),  # 11: P6_out
    (7, (4, 11)),  # 12: P7_out
)
BIFPN_OUTPUTS = (8, 9, 10, 11, 12)


class FusionNode(nn.Module):
    """Resample each input to ``level``, fuse by fast normalised fusion, swish-sepconv-BN."""

    def __init__(
        self, widths: Sequence[int], levels: Sequence[int], level: int, channels: int, norm: str | None
    ) -> None:
        super().__init__()
        self.fuse = WeightedFusion(len(widths))
        self.resample = nn.ModuleList(
            Resample(w, channels, src, level, norm=norm) for w, src in zip(widths, levels)
        )
        self.conv = post_op("swish_sepconv", channels, norm)

    def forward(self, xs: Sequence[Tensor], size: list[int]) -> Tensor:
        return self.conv(self.fuse([r(x, size) for r, x in zip(self.resample, xs)]))


class BiFPNLayer(nn.Module):
    """One bidirectional layer: P3..P7 (pool entries 0..4) -> P3_out..P7_out."""

    def __init__(self, widths: Sequence[int], channels: int, norm: str | None) -> None:
        super().__init__()
        widths = list(widths) + [channels] * len(BIFPN_NODES)
        levels = [3, 4, 5, 6, 7] + [level for level, _ in BIFPN_NODES]
        self.nodes = nn.ModuleList(
            FusionNode([widths[i] for i in inputs], [levels[i] for i in inputs], level, channels, norm)
            for level, inputs in BIFPN_NODES
        )

    def forward(self, p: list[Tensor], sizes: dict[int, list[int]]) -> list[Tensor]:
        feats = list(p)
        for node, (level, inputs) in zip(self.nodes, BIFPN_NODES):
            feats.append(node([feats[i] for i in inputs], sizes[level]))
        return [feats[i] for i in BIFPN_OUTPUTS]


class BiFPN(StackedCells):
    """C3..C5 -> OrderedDict P3..P7 of ``out_channels``, ``repeats`` BiFPN layers."""

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 64, repeats: int = 3, norm: str | None = "bn"
    ) -> None:
        super().__init__(BiFPNLayer, in_channels, out_channels, repeats, norm)


def bifpn_genotype() -> Genotype:
    nodes = [Node(level, inputs, combine="weighted", post="swish_sepconv") for level, inputs in BIFPN_NODES]
    extra = [Node(level=6, inputs=(2,), down="max"), Node(level=7, inputs=(3,), down="max")]
    return Genotype.create(nodes, outputs=BIFPN_OUTPUTS, extra_levels=extra, name="bifpn")
