"""AugFPN -- Guo, Fan, Zhang, Xiang & Pan, "AugFPN: Improving Multi-scale Feature Learning for
Object Detection", CVPR 2020.

FPN (``fixed_necks.fpn``, P6/P7 from the output P5 as in RetinaNet) with the paper's three
additions; two of them concern the neck:

- Residual Feature Augmentation: C5 is adaptive-average-pooled to 0.1, 0.2 and 0.3 of its size
  (at least 1x1); each pooled map goes through its own 1x1 conv to the pyramid's width and is
  upsampled back (bilinear). Adaptive Spatial Fusion merges the three: their concatenation goes
  through a 1x1 conv, ReLU and a 3x3 conv to one map per branch, a sigmoid makes them spatial
  weights, and the branches' weighted sum is added to M5, C5's lateral: the top of the top-down
  path, which otherwise only ever sees C5 through a channel-reducing 1x1 conv.
- Consistent Supervision: in training, the lateral maps M3..M5 -- before any top-down fusion --
  are scored by the detector's own head as well, and their loss, weighted by ``auxiliary_weight``
  (the paper's lambda), is added to the detector's. ``with_laterals`` gives them;
  ``nas.proxy.detector.ProxyDetector`` adds the ``aux_*`` losses. In eval mode none of it runs.
  lambda = 0.25: the paper's Eq. 1 weighs the auxiliary loss by lambda; its authors' released
  code scales each lateral level's auxiliary loss by 0.25.
- Soft RoI Selection is RoI pooling, not neck: ``nas.proxy.roi``. The registry gives AugFPN
  ``roi="soft"``, so in the two-stage proxy it trains with it unless ``--roi`` says otherwise.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fixed_necks.fpn import FPN
from nas.nets.builder import OUTPUT_NAMES, Features, backbone_features
from nas.nets.ops import conv_norm

RATIOS = (0.1, 0.2, 0.3)  # the pooled sizes, as fractions of C5's
AUXILIARY_WEIGHT = 0.25


class AdaptiveSpatialFusion(nn.Module):
    """K maps (N, C, H, W) -> their sum weighted by K spatial maps in (0, 1): concat (N, K*C, H, W),
    1x1 conv to C, ReLU, 3x3 conv to K, sigmoid."""

    def __init__(self, channels: int, branches: int, norm: str | None = None) -> None:
        super().__init__()
        self.weights = nn.Sequential(
            *conv_norm(branches * channels, channels, 1, norm=norm),
            nn.ReLU(),
            nn.Conv2d(channels, branches, 3, padding=1),
        )

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        weights = torch.sigmoid(self.weights(torch.cat(list(maps), dim=1)))  # (N, K, H, W)
        return sum(weights[:, k : k + 1] * x for k, x in enumerate(maps))  # type: ignore[return-value]


class ResidualFeatureAugmentation(nn.Module):
    """C5 (N, in_channels, H, W) -> ratio-invariant context (N, out_channels, H, W) for M5."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratios: Sequence[float] = RATIOS,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.ratios = tuple(ratios)
        self.reduce = nn.ModuleList(conv_norm(in_channels, out_channels, 1, norm=norm) for _ in self.ratios)
        self.fusion = AdaptiveSpatialFusion(out_channels, len(self.ratios), norm)

    def forward(self, c5: Tensor) -> Tensor:
        size = c5.shape[-2:]
        height, width = size
        branches = []
        for ratio, reduce in zip(self.ratios, self.reduce):
            pooled = F.adaptive_avg_pool2d(
                c5, (max(1, math.floor(ratio * height)), max(1, math.floor(ratio * width)))
            )
            branches.append(F.interpolate(reduce(pooled), size=size, mode="bilinear", align_corners=False))
        return self.fusion(branches)


class AugFPN(FPN):
    """C3..C5 -> OrderedDict P3..P7 of ``out_channels``: FPN with Residual Feature Augmentation,
    and the lateral maps for Consistent Supervision (``with_laterals``, training only)."""

    auxiliary_weight: float = AUXILIARY_WEIGHT

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra: str = "p6p7",
        norm: str | None = None,
        ratios: Sequence[float] = RATIOS,
    ) -> None:
        super().__init__(in_channels, out_channels, extra, norm)
        self.rfa = ResidualFeatureAugmentation(in_channels[-1], out_channels, ratios, norm)

    def forward(self, features: Features) -> OrderedDict[str, Tensor]:
        c = backbone_features(features)
        return self._pyramid(c, self.lateral_maps(c))

    def with_laterals(self, features: Features) -> tuple[OrderedDict[str, Tensor], OrderedDict[str, Tensor]]:
        """The pyramid P3..P7 and the lateral maps M3..M5 it was built from (OrderedDict
        ``P3``..``P5``, each (N, out_channels, H_l, W_l), the size of P_l): for training only."""
        c = backbone_features(features)
        laterals = self.lateral_maps(c)
        return self._pyramid(c, laterals), OrderedDict(zip(OUTPUT_NAMES, laterals))

    def _pyramid(self, c: list[Tensor], laterals: list[Tensor]) -> OrderedDict[str, Tensor]:
        """FPN's top-down path, with the RFA's context added to M5 at its top."""
        return self.top_down([*laterals[:-1], laterals[-1] + self.rfa(c[-1])])
