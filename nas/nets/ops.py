"""The operations a neck is made of: resampling between levels, combines, post-combine ops.

Shared by the genotype builder and the hand-written necks, so both compute the same thing.
Spatial sizes follow ceil-halving per level (``ceil(H / 2**k)``), as torchvision's ResNets do,
so every resample lands exactly on its target level's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.settings import NORMS


def norm_layer(norm: str | None, channels: int) -> nn.Module | None:
    """``bn`` -> BatchNorm2d, ``gn`` -> GroupNorm(32), ``none``/None -> no layer."""
    if norm in (None, "none"):
        return None
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {norm!r} (known: {', '.join(NORMS)})")


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    norm: str | None = None,
    dilation: int = 1,
) -> nn.Sequential:
    """kxk conv ('same' padding, any dilation) then norm; the conv has a bias only when there is no norm."""
    layer = norm_layer(norm, out_channels)
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=layer is None)
    return nn.Sequential(conv, layer) if layer is not None else nn.Sequential(conv)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv, pointwise 1x1 conv, norm (BiFPN's conv). (N, C, H, W) -> same."""

    def __init__(self, channels: int, norm: str | None = None) -> None:
        layer = norm_layer(norm, channels)
        layers = [
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=layer is None),
        ]
        super().__init__(*layers, *([layer] if layer is not None else []))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DetectoRS uses it (Qiao, Chen & Yuille 2021, "DetectoRS:
    Detecting Objects with Recursive Feature Pyramid and Switchable Atrous Convolution", Sec. 3.1).

    Four parallel branches, each to a quarter of ``out_channels``: a 1x1 conv, a 3x3 conv with
    dilation 3, a 3x3 conv with dilation 6 (each conv, norm, ReLU), and global average pooling
    then a 1x1 conv and ReLU, broadcast back over the map. The four are concatenated along the
    channels and that is the output: as in DetectoRS, and unlike DeepLab's ASPP, no conv fuses
    them afterwards. The pooling branch has no norm (a 1x1 map carries no batch statistics worth
    normalising). A width that is not a multiple of 4 is split as evenly as it goes.

    Shapes: x (N, in_channels, H, W) -> (N, out_channels, H, W).
    """

    DILATIONS = (3, 6)  # of the two 3x3 branches; the 1x1 branch has none

    def __init__(self, in_channels: int, out_channels: int, norm: str | None = None) -> None:
        super().__init__()
        widths = [(out_channels + k) // 4 for k in range(4)]  # sums to out_channels
        self.branches = nn.ModuleList(
            [nn.Sequential(*conv_norm(in_channels, widths[0], 1, norm=norm), nn.ReLU())]
            + [
                nn.Sequential(*conv_norm(in_channels, width, 3, norm=norm, dilation=dilation), nn.ReLU())
                for width, dilation in zip(widths[1:3], self.DILATIONS)
            ]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, widths[3], 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1)


def post_op(kind: str, channels: int, norm: str | None) -> nn.Module:
    """What follows a combine (``nas.genotype.POSTS`` but ``none``, which is no module)."""
    if kind == "conv":
        return conv_norm(channels, channels, 3, norm=norm)
    if kind == "relu_conv":
        return nn.Sequential(nn.ReLU(), *conv_norm(channels, channels, 3, norm=norm))
    if kind == "swish_sepconv":
        return nn.Sequential(nn.SiLU(), SeparableConv(channels, norm))
    if kind == "aspp":
        return ASPP(channels, channels, norm)
    raise ValueError(f"unknown post op {kind!r}")


class Resample(nn.Module):
    """Brings a feature map from one level and width to another.

    A 1x1 conv (+norm) adapts the width where it differs, then nearest upsampling to the
    target size, or downsampling: max-pool (kernel stride+1), kernel-1 subsampling, or a
    3x3 stride-2 conv (optionally after a ReLU) that also maps the width.

    Shapes: x (N, C_in, H_in, W_in) -> (N, C_out, H, W), (H, W) the target level's size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_level: int,
        out_level: int,
        up: str = "nearest",
        down: str = "max",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        steps = out_level - in_level
        conv_down = steps > 0 and down in ("conv", "relu_conv")
        self.project = (
            conv_norm(in_channels, out_channels, 1, norm=norm)
            if in_channels != out_channels and not conv_down
            else None
        )
        self.upsample = steps < 0
        self.down: nn.Module | None = None
        if conv_down:
            if steps != 1:
                raise ValueError(f"'{down}' downsampling spans one level, not {steps}")
            conv = conv_norm(in_channels, out_channels, 3, stride=2, norm=norm)
            self.down = nn.Sequential(nn.ReLU(), *conv) if down == "relu_conv" else conv
        elif steps > 0:
            stride = 2**steps
            if down == "max":
                self.down = nn.MaxPool2d(stride + 1, stride, padding=stride // 2)
            elif down == "subsample":
                self.down = nn.MaxPool2d(1, stride)
            else:
                raise ValueError(f"unknown down op {down!r}")
        elif steps < 0 and up != "nearest":
            raise ValueError(f"unknown up op {up!r}")

    @property
    def is_identity(self) -> bool:
        return self.project is None and self.down is None and not self.upsample

    def forward(self, x: Tensor, size: list[int]) -> Tensor:
        if self.project is not None:
            x = self.project(x)
        if self.down is not None:
            return self.down(x)
        if self.upsample:
            return F.interpolate(x, size=size, mode="nearest")
        return x


def global_attention(coarser: Tensor, finer: Tensor) -> Tensor:
    """NAS-FPN's attention merge: coarser + finer * sigmoid(global max-pool of coarser).

    Both (N, C, H, W), already resampled to the node's level; the gate is (N, C, 1, 1).
    """
    return coarser + finer * torch.sigmoid(torch.amax(coarser, dim=(2, 3), keepdim=True))


class WeightedFusion(nn.Module):
    """BiFPN's fast normalised fusion: sum_i w_i x_i / (eps + sum_j w_j), w = relu(weights).

    Weights start at 1, eps = 1e-4. Inputs: a list of (N, C, H, W) tensors of equal shape.
    """

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def forward(self, xs: list[Tensor]) -> Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


def add_all(xs: list[Tensor]) -> Tensor:
    """Element-wise sum of a list of equal-shape tensors."""
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def level_sizes(c3: Tensor, c4: Tensor, c5: Tensor) -> dict[int, list[int]]:
    """Spatial size of every pyramid level P3..P7 given the backbone's C3..C5 (ceil halving).

    Raises ValueError when C4 or C5 is not the ceil-half of the level below it.
    """
    sizes = {3: list(c3.shape[-2:])}
    for level, x in ((4, c4), (5, c5)):
        actual = list(x.shape[-2:])
        expected = [(s + 1) // 2 for s in sizes[level - 1]]
        if actual != expected:
            raise ValueError(
                f"C{level} is {actual[0]}x{actual[1]} but C{level - 1} is "
                f"{sizes[level - 1][0]}x{sizes[level - 1][1]}: "
                "each level must be the ceil-half of the one below"
            )
        sizes[level] = actual
    for level in (6, 7):
        sizes[level] = [(s + 1) // 2 for s in sizes[level - 1]]
    return sizes
