"""The frame BiFPN and NAS-FPN share: P6 and P7 made from C5, then one cell stacked ``repeats``
times -- as torchvision's ``ExtraFPNBlock`` is the one part for FPN's extra levels.

P6 = max-pool(norm(1x1 conv(C5))), P7 = max-pool(P6) (``nas.nets.ops.Resample``). A cell maps the five
maps P3..P7 to five new ones; the first reads C3..C5's widths, every later one ``out_channels``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from nas.nets.builder import OUTPUT_NAMES, Features, backbone_features
from nas.nets.ops import Resample, level_sizes

# widths of P3..P7, channels, norm -> a module: (P3..P7, {level: [h, w]}) -> P3..P7
CellFactory = Callable[[Sequence[int], int, "str | None"], nn.Module]


class StackedCells(nn.Module):
    """C3..C5 -> OrderedDict P3..P7 of ``out_channels``: P6/P7 from C5, then ``repeats`` cells.

    Shapes: C3..C5 (N, C_i, H_i, W_i), H_{i+1} = ceil(H_i / 2); P_l (N, out_channels,
    ceil(H_3 / 2**(l-3)), ceil(W_3 / 2**(l-3))).
    """

    def __init__(
        self,
        make_cell: CellFactory,
        in_channels: Sequence[int],
        out_channels: int,
        repeats: int,
        norm: str | None,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.p6 = Resample(in_channels[2], out_channels, 5, 6, norm=norm)
        self.p7 = Resample(out_channels, out_channels, 6, 7, norm=norm)
        widths = list(in_channels) + [out_channels] * 2
        self.cells = nn.ModuleList(
            make_cell(widths if r == 0 else [out_channels] * 5, out_channels, norm) for r in range(repeats)
        )

    def forward(self, features: Features) -> OrderedDict[str, Tensor]:
        c3, c4, c5 = backbone_features(features)
        sizes = level_sizes(c3, c4, c5)
        p6 = self.p6(c5, sizes[6])
        p = [c3, c4, c5, p6, self.p7(p6, sizes[7])]
        for cell in self.cells:
            p = cell(p, sizes)
        return OrderedDict(zip(OUTPUT_NAMES, p))
