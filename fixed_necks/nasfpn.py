"""NAS-FPN -- Ghiasi, Lin & Le, "NAS-FPN: Learning Scalable Feature Pyramid Architecture for
Object Detection", CVPR 2019; the published cell of the official TensorFlow implementation.

P6 = max-pool(BN(1x1 conv(C5))), P7 = max-pool(P6). A cell of seven merging cells, each
reading two feature maps, resampling them to its level (1x1 conv + BN where widths differ,
nearest upsampling, max-pooling), merging by sum or by global attention
(coarser + finer * sigmoid(global max-pool(coarser))), then ReLU -> 3x3 conv -> BN. The five
output cells first add every earlier same-level map that no cell consumed (here: P5 into the
P5 output, P7 into the P7 output). The cell is stacked ``repeats`` times (the paper: 7 x 256).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fixed_necks.stacked import StackedCells
from nas.genotype import Genotype, Node
from nas.nets.ops import Resample, global_attention, post_op


class MergingCells(nn.Module):
    """The published NAS-FPN cell: P3..P7 (widths ``widths``) -> P3..P7 of ``channels``."""

    def __init__(self, widths: Sequence[int], channels: int, norm: str | None) -> None:
        super().__init__()
        w3, w4, w5, w6, w7 = widths

        def resample(width: int, src: int, dst: int) -> Resample:
            return Resample(width, channels, src, dst, norm=norm)

        def conv() -> nn.Module:
            return post_op("relu_conv", channels, norm)

        # GP(P6, P4) -> P4 (intermediate)
        self.gp_p4 = resample(w4, 4, 4)
        self.gp_p6 = resample(w6, 6, 4)
        self.gp_conv = conv()
        # SUM(P4, GP) -> P4 (intermediate)
        self.sum_p4 = resample(w4, 4, 4)
        self.sum_conv = conv()
        # SUM(P3, SUM) -> P3 output
        self.p3_p3 = resample(w3, 3, 3)
        self.p3_sum = resample(channels, 4, 3)
        self.p3_conv = conv()
        # SUM(SUM, P3out) -> P4 output
        self.p4_p3 = resample(channels, 3, 4)
        self.p4_conv = conv()
        # GP(P3out, P4out) + P5 -> P5 output
        self.p5_p3 = resample(channels, 3, 5)
        self.p5_p4 = resample(channels, 4, 5)
        self.p5_p5 = resample(w5, 5, 5)
        self.p5_conv = conv()
        # GP(SUM, P5out) + P7 -> P7 output
        self.p7_sum = resample(channels, 4, 7)
        self.p7_p5 = resample(channels, 5, 7)
        self.p7_p7 = resample(w7, 7, 7)
        self.p7_conv = conv()
        # GP(P5out, P7out) -> P6 output
        self.p6_p5 = resample(channels, 5, 6)
        self.p6_p7 = resample(channels, 7, 6)
        self.p6_conv = conv()

    def forward(self, p: list[Tensor], s: dict[int, list[int]]) -> list[Tensor]:
        p3, p4, p5, p6, p7 = p
        gp = self.gp_conv(global_attention(self.gp_p6(p6, s[4]), self.gp_p4(p4, s[4])))
        sum4 = self.sum_conv(self.sum_p4(p4, s[4]) + gp)
        p3_out = self.p3_conv(self.p3_p3(p3, s[3]) + self.p3_sum(sum4, s[3]))
        p4_out = self.p4_conv(sum4 + self.p4_p3(p3_out, s[4]))
        p5_out = self.p5_conv(
            global_attention(self.p5_p4(p4_out, s[5]), self.p5_p3(p3_out, s[5])) + self.p5_p5(p5, s[5])
        )
        p7_out = self.p7_conv(
            global_attention(self.p7_p5(p5_out, s[7]), self.p7_sum(sum4, s[7])) + self.p7_p7(p7, s[7])
        )
        p6_out = self.p6_conv(global_attention(self.p6_p7(p7_out, s[6]), self.p6_p5(p5_out, s[6])))
        return [p3_out, p4_out, p5_out, p6_out, p7_out]


class NASFPN(StackedCells):
    """C3..C5 -> OrderedDict P3..P7 of ``out_channels``, ``repeats`` stacked cells."""

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, repeats: int = 7, norm: str | None = "bn"
    ) -> None:
        super().__init__(MergingCells, in_channels, out_channels, repeats, norm)


# The published cell: (level, combine, inputs, is_output), P3..P7 = 0..4, new nodes from 5.
PUBLISHED_CELL = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)


def nasfpn_genotype() -> Genotype:
    nodes = [
        Node(level, inputs, combine=combine, post="relu_conv", absorb_unconsumed=is_output)
        for level, combine, inputs, is_output in PUBLISHED_CELL
    ]
    extra = [Node(level=6, inputs=(2,), down="max"), Node(level=7, inputs=(3,), down="max")]
    # The outputs are the last five nodes (levels 3, 4, 5, 7, 6), returned in level order.
    return Genotype.create(nodes, outputs=[7, 8, 9, 11, 10], extra_levels=extra, name="nasfpn")
