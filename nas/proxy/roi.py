"""RoI feature extraction for the two-stage proxy (Faster R-CNN): which pyramid levels a RoI reads.

- ``fpn``: one level per RoI, chosen by its size -- torchvision's ``MultiScaleRoIAlign`` (Lin et al.
  2017, "Feature Pyramid Networks for Object Detection", Eq. 1: a box of the canonical side goes
  to P4, one twice as large to P5, ...).
- ``panet``: PANet's adaptive feature pooling (Liu et al. 2018, "Path Aggregation Network for
  Instance Segmentation", Sec. 3.2): RoIAlign from every level, each level's grid through its own
  first fully-connected layer, fused by element-wise max, then the shared second layer.
- ``soft``: AugFPN's soft RoI selection (Guo et al. 2020, "AugFPN: Improving Multi-scale Feature
  Learning for Object Detection"): RoIAlign from every level, fused by channel-wise weights that a
  small gating network computes from the pooled features (sigmoid).

``roi_pooling(mode, ...)`` gives the pair torchvision's ``RoIHeads`` takes as ``box_roi_pool`` and
``box_head``: the pooler maps (features {P3..P6}, proposals per image, image sizes) to RoI
features, the head maps those to (R, representation) vectors for the box predictor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from nas.settings import ROI_MODES

ROI_LEVELS = ("P3", "P4", "P5", "P6")  # the levels RoIs are pooled from (as Faster R-CNN's FPN: no P7)
OUTPUT_SIZE = 7
SAMPLING_RATIO = 2


def pool_levels(features: Sequence[Tensor], boxes: list[Tensor], image_size: int) -> list[Tensor]:
    """RoIAlign of every box from every level.

    features: L maps (N, C, H_l, W_l); boxes: per image (R_i, 4) xyxy in image pixels. Returns L
    tensors (R, C, 7, 7), R = sum R_i, rows in the boxes' order. A level's scale is inferred from
    its size as ``MultiScaleRoIAlign`` does (the nearest power of two of H_l / image_size).
    """
    return [
        roi_align(
            f,
            boxes,
            OUTPUT_SIZE,
            spatial_scale=2.0 ** round(math.log2(f.shape[-1] / image_size)),
            sampling_ratio=SAMPLING_RATIO,
        )
        for f in features
    ]


class AllLevelRoIAlign(nn.Module):
    """RoIAlign from every level P3..P6: (features, proposals, image sizes) -> (R, L, C, 7, 7)."""

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        levels = [features[name] for name in ROI_LEVELS]
        return torch.stack(pool_levels(levels, proposals, image_shapes[0][1]), dim=1)


class AdaptiveFeaturePoolingHead(nn.Module):
    """PANet's box head on RoIs pooled from every level: per level its own fc (+ReLU), element-wise
    max over the levels, then a shared fc (+ReLU). (R, L, C, 7, 7) -> (R, representation)."""

    def __init__(self, levels: int, in_channels: int, representation: int) -> None:
        super().__init__()
        size = in_channels * OUTPUT_SIZE * OUTPUT_SIZE
        self.fc6 = nn.ModuleList(nn.Linear(size, representation) for _ in range(levels))
        self.fc7 = nn.Linear(representation, representation)

    def forward(self, pooled: Tensor) -> Tensor:
        per_level = [torch.relu(fc(pooled[:, k].flatten(1))) for k, fc in enumerate(self.fc6)]
        return torch.relu(self.fc7(torch.stack(per_level).amax(dim=0)))

    def one_level(self, pooled: Tensor, level: int) -> Tensor:
        """RoIs pooled from level ``level`` (index into P3..P6) alone: (R, C, 7, 7) -> (R, representation),
        through that level's own fc."""
        return torch.relu(self.fc7(torch.relu(self.fc6[level](pooled.flatten(1)))))


class SoftRoISelection(nn.Module):
    """AugFPN's soft RoI selection: every level's RoI features, weighted per level and channel.

    The gating network sees each level's RoI features average-pooled to (R, L * C) and gives
    sigmoid weights (R, L, C) through fc (L * C -> C), ReLU, fc (C -> L * C); the RoI feature is
    the weighted sum over the levels. (features, proposals, image sizes) -> (R, C, 7, 7).
    """

    def __init__(self, channels: int, levels: int = len(ROI_LEVELS)) -> None:
        super().__init__()
        self.pool = AllLevelRoIAlign()
        self.gate = nn.Sequential(
            nn.Linear(levels * channels, channels), nn.ReLU(), nn.Linear(channels, levels * channels)
        )

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        pooled = self.pool(features, proposals, image_shapes)  # (R, L, C, 7, 7)
        weights = torch.sigmoid(self.gate(pooled.mean(dim=(3, 4)).flatten(1))).view(*pooled.shape[:3], 1, 1)
        return (weights * pooled).sum(dim=1)


def _fpn_pooling(channels: int, canonical_scale: int, representation: int) -> tuple[nn.Module, nn.Module]:
    pool = MultiScaleRoIAlign(list(ROI_LEVELS), OUTPUT_SIZE, SAMPLING_RATIO, canonical_scale=canonical_scale)
    return pool, TwoMLPHead(channels * OUTPUT_SIZE * OUTPUT_SIZE, representation)


def _panet_pooling(channels: int, canonical_scale: int, representation: int) -> tuple[nn.Module, nn.Module]:
    return AllLevelRoIAlign(), AdaptiveFeaturePoolingHead(len(ROI_LEVELS), channels, representation)


def _soft_pooling(channels: int, canonical_scale: int, representation: int) -> tuple[nn.Module, nn.Module]:
    return SoftRoISelection(channels), TwoMLPHead(channels * OUTPUT_SIZE * OUTPUT_SIZE, representation)


# One builder a RoI mode (``nas.settings.ROI_MODES``): (channels, canonical scale, representation)
# -> (box_roi_pool, box_head).
ROI_POOLINGS = {"fpn": _fpn_pooling, "panet": _panet_pooling, "soft": _soft_pooling}


def roi_pooling(
    mode: str, channels: int, canonical_scale: int, representation: int = 256
) -> tuple[nn.Module, nn.Module]:
    """``box_roi_pool`` and ``box_head`` for RoI mode ``mode`` on a ``channels``-wide pyramid;
    ``canonical_scale``: the box side ``fpn`` maps to P4."""
    if mode not in ROI_POOLINGS:
        raise ValueError(f"unknown RoI mode {mode!r} (known: {', '.join(ROI_MODES)})")
    return ROI_POOLINGS[mode](channels, canonical_scale, representation)


def one_level_features(head: nn.Module, pooled: Tensor, level: int) -> Tensor:
    """The box head's vectors for RoIs pooled from one level alone, (R, C, 7, 7) -> (R, representation):
    PANet's head puts them through that level's own fc, the others take them as they are."""
    if isinstance(head, AdaptiveFeaturePoolingHead):
        return head.one_level(pooled, level)
    return head(pooled)
