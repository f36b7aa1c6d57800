"""Hand-designed necks, each a readable module written the paper's way, with its genotype twin.

``FIXED_NECKS[name]`` gives the paper, the hand-written class, the twin genotype and the
build settings the paper uses; ``build`` makes the hand-written module, ``build_twin`` the
same neck from its genotype (same parameter count; with weights copied, the same outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fixed_necks.bifpn import BiFPN, bifpn_genotype
from fixed_necks.fpn import FPN, fpn_genotype
from fixed_necks.nasfpn import NASFPN, nasfpn_genotype
from fixed_necks.panet import PANet, panet_genotype
from nas.builder import GenotypeNeck
from nas.genotype import Genotype


@dataclass(frozen=True)
class FixedNeck:
    """A hand-designed neck: its paper, hand-written module, genotype twin and settings."""

    name: str
    paper: str
    module: Callable[..., nn.Module]
    make_genotype: Callable[[], Genotype]
    norm: str | None
    repeats: int = 1
    module_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def genotype(self) -> Genotype:
        return self.make_genotype()

    def build(
        self, in_channels: Sequence[int], out_channels: int = 256, repeats: int | None = None
    ) -> nn.Module:
        """The hand-written module."""
        kwargs = dict(self.module_kwargs, norm=self.norm)
        if self.repeats > 1 or repeats not in (None, 1):
            kwargs["repeats"] = repeats or self.repeats
        return self.module(in_channels, out_channels, **kwargs)

    def build_twin(
        self, in_channels: Sequence[int], out_channels: int = 256, repeats: int | None = None
    ) -> GenotypeNeck:
        """The same neck built from its genotype."""
        return GenotypeNeck(self.genotype, in_channels, out_channels, repeats or self.repeats, self.norm)


FIXED_NECKS: dict[str, FixedNeck] = {
    neck.name: neck
    for neck in (
        FixedNeck(
            "fpn",
            "Lin et al. 2017, Feature Pyramid Networks for Object Detection (P6/P7 as in RetinaNet)",
            FPN,
            fpn_genotype,
            norm=None,
            module_kwargs={"extra": "p6p7"},
        ),
        FixedNeck(
            "fpn_maxpool",
            "Lin et al. 2017, Feature Pyramid Networks for Object Detection (P6/P7 subsampled, Faster R-CNN)",
            FPN,
            lambda: fpn_genotype("maxpool"),
            norm=None,
            module_kwargs={"extra": "maxpool"},
        ),
        FixedNeck(
            "panet",
            "Liu et al. 2018, Path Aggregation Network for Instance Segmentation",
            PANet,
            panet_genotype,
            norm=None,
        ),
        FixedNeck(
            "bifpn",
            "Tan, Pang & Le 2020, EfficientDet: Scalable and Efficient Object Detection",
            BiFPN,
            bifpn_genotype,
            norm="bn",
            repeats=3,
        ),
        FixedNeck(
            "nasfpn",
            "Ghiasi, Lin & Le 2019, NAS-FPN: Learning Scalable Feature Pyramid Architecture",
            NASFPN,
            nasfpn_genotype,
            norm="bn",
            repeats=7,
        ),
    )
}


def get_fixed_neck(name: str) -> FixedNeck:
    """The registered neck ``name``; KeyError with the known names otherwise."""
    try:
        return FIXED_NECKS[name]
    except KeyError:
        raise KeyError(f"unknown neck {name!r} (known: {', '.join(FIXED_NECKS)})") from None
