"""Finding a neck by what a user types: a registered fixed neck's name or a genotype file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fixed_necks import FIXED_NECKS
from nas.builder import GenotypeNeck
from nas.genotype import Genotype, GenotypeError, load_genotype


@dataclass(frozen=True)
class NeckSpec:
    """A genotype with the build settings to use unless told otherwise."""

    genotype: Genotype
    repeats: int = 1
    norm: str | None = "bn"

    def build(self, in_channels: Sequence[int], out_channels: int = 256) -> GenotypeNeck:
        return GenotypeNeck(self.genotype, in_channels, out_channels, self.repeats, self.norm)


def resolve_neck(spec: str) -> NeckSpec:
    """``fpn``, ``bifpn``, ... or a path to a genotype JSON file; GenotypeError otherwise."""
    if spec in FIXED_NECKS:
        neck = FIXED_NECKS[spec]
        return NeckSpec(neck.genotype, neck.repeats, neck.norm)
    if spec.endswith(".json") or Path(spec).exists():
        # A genotype file carries no build settings: one repeat, BN, unless the caller says more.
        return NeckSpec(load_genotype(spec))
    raise GenotypeError(
        f"unknown neck {spec!r}: neither a registered neck ({', '.join(FIXED_NECKS)}) nor a genotype file"
    )
