"""Hand-designed necks, each a readable module written the paper's way, with its genotype twin
where the genotype can express it.

``FIXED_NECKS[name]`` gives the paper, the hand-written class, the twin genotype (None when there
is none: AugFPN's adaptive pooling and spatial fusion, RFP's feedback into the backbone) and the
build settings the paper uses; ``build`` makes the hand-written module, ``build_twin`` the
same neck from its genotype (same parameter count; with weights copied, the same outputs).

A neck class with ``takes_images = True`` runs the backbone itself (RFP): ``build`` hands it the
backbone ``body`` and ``freeze_body``, and its forward takes normalised images, not C3..C5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from fixed_necks.augfpn import AugFPN
from fixed_necks.bifpn import BiFPN, bifpn_genotype
from fixed_necks.fpn import FPN, fpn_genotype
from fixed_necks.nasfpn import NASFPN, nasfpn_genotype
from fixed_necks.panet import PANet, panet_genotype
from fixed_necks.rfp import RFP
from nas.genotype import Genotype
from nas.nets.builder import GenotypeNeck


@dataclass(frozen=True)
class FixedNeck:
    """A hand-designed neck: its paper, hand-written module, genotype twin (or None) and settings.

    ``roi``: the RoI pooling of the paper's two-stage detector when it is not FPN's
    (``nas.proxy.roi.ROI_MODES``; AugFPN's ``soft``); None for FPN's.
    """

    name: str
    paper: str
    module: Callable[..., nn.Module]
    make_genotype: Callable[[], Genotype] | None
    norm: str | None
    repeats: int = 1
    module_kwargs: dict[str, Any] = field(default_factory=dict)
    roi: str | None = None

    @property
    def genotype(self) -> Genotype | None:
        return self.make_genotype() if self.make_genotype is not None else None

    @property
    def needs_images(self) -> bool:
        """The module runs the backbone itself: it is built with the body and fed images."""
        return bool(getattr(self.module, "takes_images", False))

    def build(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        repeats: int | None = None,
        body: nn.Module | None = None,
        freeze_body: bool = False,
    ) -> nn.Module:
        """The hand-written module; one that ``needs_images`` gets the backbone ``body`` it runs,
        and keeps its weights fixed with ``freeze_body``."""
        kwargs = dict(self.module_kwargs, norm=self.norm)
        if self.repeats > 1 or repeats not in (None, 1):
            kwargs["repeats"] = repeats or self.repeats
        if self.needs_images:
            if body is None:
                raise ValueError(f"{self.name} runs the backbone itself: build it with the body")
            kwargs.update(body=body, freeze_body=freeze_body)
        return self.module(in_channels=in_channels, out_channels=out_channels, **kwargs)

    def build_twin(
        self, in_channels: Sequence[int], out_channels: int = 256, repeats: int | None = None
    ) -> GenotypeNeck:
        """The same neck built from its genotype; ValueError for a neck without one."""
        genotype = self.genotype
        if genotype is None:
            raise ValueError(f"{self.name} has no genotype twin")
        return GenotypeNeck(genotype, in_channels, out_channels, repeats or self.repeats, self.norm)


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
            partial(fpn_genotype, "maxpool"),  # a partial, not a lambda: a NeckSpec pickles
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
        FixedNeck(
            "augfpn",
            "Guo et al. 2020, AugFPN: Improving Multi-scale Feature Learning for Object Detection",
            AugFPN,
            None,
            norm=None,
            roi="soft",
        ),
        FixedNeck(
            "rfp",
            "Qiao, Chen & Yuille 2021, DetectoRS: Detecting Objects with Recursive Feature Pyramid "
            "and Switchable Atrous Convolution (RFP, T = 2)",
            RFP,
            None,
            norm=None,
            module_kwargs={"steps": 2},
        ),
    )
}


def get_fixed_neck(name: str) -> FixedNeck:
    """The registered neck ``name``; KeyError with the known names otherwise."""
    try:
        return FIXED_NECKS[name]
    except KeyError:
        raise KeyError(f"unknown neck {name!r} (known: {', '.join(FIXED_NECKS)})") from None
