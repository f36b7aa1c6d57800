"""Finding a neck by what a user types: a registered fixed neck's name or a genotype file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fixed_necks import FIXED_NECKS, FixedNeck
from nas.genotype import Genotype, GenotypeError, Node, load_genotype
from nas.nets.builder import GenotypeNeck

NO_FUSION = "nofusion"


@dataclass(frozen=True)
class NeckSpec:
    """A neck to build, with the build settings to use unless told otherwise.

    Built from ``genotype`` when there is one; otherwise ``fixed`` -- the registered neck it came
    from -- is a hand-written neck without a genotype twin (AugFPN, RFP) and builds its module.
    ``roi``: the two-stage detector's RoI pooling for this neck when it is not the proxy's own
    (AugFPN's soft RoI selection, a compare entry's ``fpn@panet``); None follows the proxy.
    """

    genotype: Genotype | None
    repeats: int = 1
    norm: str | None = "bn"
    fixed: FixedNeck | None = None
    roi: str | None = None

    def __post_init__(self) -> None:
        if self.genotype is None and self.fixed is None:
            raise ValueError("a neck needs a genotype or a registered fixed neck")

    @property
    def name(self) -> str:
        """The genotype's name ("" for an unnamed file), or the fixed neck's."""
        if self.genotype is not None:
            return self.genotype.name
        assert self.fixed is not None
        return self.fixed.name

    @property
    def needs_images(self) -> bool:
        """The neck runs the backbone itself: build it with a body, feed it images (RFP)."""
        return self.genotype is None and self.fixed is not None and self.fixed.needs_images

    def build(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        body: nn.Module | None = None,
        freeze_body: bool = False,
    ) -> nn.Module:
        """The neck module; ``body`` and ``freeze_body`` only for a neck that ``needs_images``."""
        if self.genotype is not None:
            return GenotypeNeck(self.genotype, in_channels, out_channels, self.repeats, self.norm)
        assert self.fixed is not None
        return self.fixed.build(in_channels, out_channels, self.repeats, body, freeze_body)


def no_fusion_neck() -> NeckSpec:
    """The neck with no fusion at all: each of P3..P5 only its lateral (the 1x1 width conv) and a
    3x3 conv, P6/P7 max-pooled from C5 and convolved alike -- FPN's ablation without the top-down
    path (Lin et al. 2017, Table 2: 24.9 AP against FPN's 33.9). The floor a fusing neck must beat."""
    nodes = [Node(level=level, inputs=(i,), post="conv") for i, level in enumerate((3, 4, 5, 6, 7))]
    extra = [Node(level=6, inputs=(2,)), Node(level=7, inputs=(3,))]
    return NeckSpec(Genotype.create(nodes, [5, 6, 7, 8, 9], extra, name=NO_FUSION), norm=None)


def resolve_neck(spec: str) -> NeckSpec:
    """``fpn``, ``bifpn``, ..., ``nofusion`` or a path to a genotype JSON file; GenotypeError otherwise."""
    if spec == NO_FUSION:
        return no_fusion_neck()
    if spec in FIXED_NECKS:
        neck = FIXED_NECKS[spec]
        return NeckSpec(neck.genotype, neck.repeats, neck.norm, fixed=neck, roi=neck.roi)
    if spec.endswith(".json") or Path(spec).exists():
        # A genotype file carries no build settings: one repeat, BN, unless the caller says more.
        return NeckSpec(load_genotype(spec))
    raise GenotypeError(
        f"unknown neck {spec!r}: neither a registered neck ({', '.join([*FIXED_NECKS, NO_FUSION])}) "
        "nor a genotype file"
    )
