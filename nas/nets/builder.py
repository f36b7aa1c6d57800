"""The builder: genotype + build settings -> a neck ``nn.Module`` for torchvision's detectors.

>>> neck = build_neck(genotype, in_channels=[128, 256, 512], out_channels=256, repeats=3, norm="bn")
>>> pyramid = neck({"C3": c3, "C4": c4, "C5": c5})   # OrderedDict P3..P7, 256 channels each

Input sizes: levels are ceil-halvings of one another (``ceil(H / 2**k)``), as torchvision's
ResNets produce for any image size, so every size works; an image whose side is a multiple of
128 (the stride of P7) gives exact halvings. Features that break the rule raise ValueError.

Nodes that reach no output are not built. The forward walks a plan fixed at build time: per
node one gather, its resamples, one combine, one post op -- the same calls hand-written code
makes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Union

from torch import Tensor, nn

from nas.genotype import BACKBONE_INPUTS, LEVELS, NUM_INPUTS, Genotype, Node
from nas.nets.ops import Resample, WeightedFusion, add_all, global_attention, level_sizes, post_op

Features = Union["OrderedDict[str, Tensor]", dict, Sequence[Tensor]]
OUTPUT_NAMES = tuple(f"P{level}" for level in LEVELS)


class GraphNode(nn.Module):
    """One node: resample what it reads to its level, combine, add absorbed entries, post op.

    ``forward(entries, size)`` reads ``entries[i]`` for i in ``reads`` (each (N, C_i, H_i, W_i))
    and returns (N, out_channels, H, W), (H, W) = ``size``, the node level's size.
    """

    def __init__(
        self,
        node: Node,
        reads: tuple[int, ...],
        entry_levels: Sequence[int],
        entry_widths: Sequence[int],
        out_channels: int,
        norm: str | None,
    ) -> None:
        super().__init__()
        self.reads = reads
        self.num_inputs = len(node.inputs)
        self.combine = node.combine
        # Registration order -- fusion weights, resamples, post -- is effdet's, so weights copy across.
        self.fusion = WeightedFusion(self.num_inputs) if node.combine == "weighted" else None
        # NAS-FPN's attention gates with the coarser input; on a tie, the first.
        levels = [entry_levels[i] for i in reads]
        self.coarser_first = node.combine != "attention" or levels[0] >= levels[1]
        resamplers = [
            Resample(entry_widths[i], out_channels, entry_levels[i], node.level, node.up, node.down, norm)
            for i in reads
        ]
        self.resample = nn.ModuleList([r for r in resamplers if not r.is_identity])
        slots, k = [], 0
        for r in resamplers:
            slots.append(-1 if r.is_identity else k)
            k += not r.is_identity
        self.slots = tuple(slots)
        self.post = None if node.post == "none" else post_op(node.post, out_channels, norm)

    def forward(self, entries: list[Tensor | None], size: list[int]) -> Tensor:
        xs: list[Tensor] = []
        for i, slot in zip(self.reads, self.slots):
            x = entries[i]
            assert x is not None
            xs.append(x if slot < 0 else self.resample[slot](x, size))
        inputs, absorbed = xs[: self.num_inputs], xs[self.num_inputs :]
        if self.combine == "attention":
            a, b = inputs if self.coarser_first else inputs[::-1]
            out = global_attention(a, b)
        elif self.fusion is not None:
            out = self.fusion(inputs)
        else:
            out = add_all(inputs)
        if absorbed:
            out = add_all([out, *absorbed])
        return self.post(out) if self.post is not None else out


class GraphCell(nn.Module):
    """One repeat of the genotype's nodes: pool entries P3..P7 in, the outputs P3..P7 out."""

    def __init__(
        self, genotype: Genotype, entry_widths: Sequence[int], out_channels: int, norm: str | None
    ) -> None:
        super().__init__()
        used = genotype.used_entries()
        widths = list(entry_widths) + [out_channels] * len(genotype.nodes)
        self.nodes = nn.ModuleDict()
        for i, node in enumerate(genotype.nodes):
            index = NUM_INPUTS + i
            if index in used:
                self.nodes[str(index)] = GraphNode(
                    node, genotype.reads(index), genotype.entry_levels, widths, out_channels, norm
                )
        self.levels = tuple(node.level for node in genotype.nodes)
        self.outputs = genotype.outputs
        self.num_entries = genotype.num_entries

    def forward(self, pool: list[Tensor | None], sizes: dict[int, list[int]]) -> list[Tensor]:
        entries = list(pool) + [None] * (self.num_entries - NUM_INPUTS)
        for key, node in self.nodes.items():
            index = int(key)
            entries[index] = node(entries, sizes[self.levels[index - NUM_INPUTS]])
        outputs = []
        for i in self.outputs:
            out = entries[i]
            assert out is not None  # the genotype's outputs are all computed
            outputs.append(out)
        return outputs


class GenotypeNeck(nn.Module):
    """A neck built from a genotype: C3..C5 -> OrderedDict P3..P7 of ``out_channels`` each.

    Args:
        genotype: the graph (validated).
        in_channels: widths of the backbone's C3, C4, C5.
        out_channels: width of every node and output.
        repeats: the cell is stacked this many times; repeat r > 0 reads repeat r-1's outputs.
        norm: ``bn``, ``gn`` or ``none``/None, used after every conv.

    Shapes: features C3..C5, each (N, C_i, H_i, W_i) with H_{i+1} = ceil(H_i / 2), as an
    OrderedDict/dict (in C3, C4, C5 order) or a list; returns OrderedDict ``P3``..``P7``,
    each (N, out_channels, ceil(H_3 / 2**(l-3)), ...).
    """

    def __init__(
        self,
        genotype: Genotype,
        in_channels: Sequence[int],
        out_channels: int = 256,
        repeats: int = 1,
        norm: str | None = "bn",
    ) -> None:
        super().__init__()
        if len(in_channels) != BACKBONE_INPUTS:
            raise ValueError(f"in_channels gives the widths of C3..C5: 3 numbers, got {len(in_channels)}")
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.genotype = genotype
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.repeats = repeats
        self.norm = norm
        first_widths = list(in_channels) + [out_channels, out_channels]
        used = genotype.used_entries()
        self.extra_levels = nn.ModuleDict(
            {
                str(BACKBONE_INPUTS + k): GraphNode(
                    node, node.inputs, genotype.entry_levels, first_widths, out_channels, norm
                )
                for k, node in enumerate(genotype.extra_levels)
                if BACKBONE_INPUTS + k in used
            }
        )
        self.cells = nn.ModuleList(
            GraphCell(genotype, first_widths if r == 0 else [out_channels] * NUM_INPUTS, out_channels, norm)
            for r in range(repeats)
        )

    def forward(self, features: Features) -> OrderedDict[str, Tensor]:
        c3, c4, c5 = backbone_features(features)
        sizes = level_sizes(c3, c4, c5)
        pool: list[Tensor | None] = [c3, c4, c5, None, None]
        for key, node in self.extra_levels.items():
            index = int(key)
            pool[index] = node(pool, sizes[LEVELS[index]])
        outputs: list[Tensor] = []
        for cell in self.cells:  # at least one
            outputs = cell(pool, sizes)
            pool = list(outputs)
        return OrderedDict(zip(OUTPUT_NAMES, outputs))


def build_neck(
    genotype: Genotype,
    in_channels: Sequence[int],
    out_channels: int = 256,
    repeats: int = 1,
    norm: str | None = "bn",
) -> GenotypeNeck:
    """Builds the neck module for ``genotype``; see ``GenotypeNeck``."""
    return GenotypeNeck(genotype, in_channels, out_channels, repeats, norm)


def backbone_features(features: Features) -> list[Tensor]:
    maps = list(features.values()) if isinstance(features, dict) else list(features)
    if len(maps) != BACKBONE_INPUTS:
        raise ValueError(f"the neck takes the backbone's C3, C4, C5: 3 feature maps, got {len(maps)}")
    return maps
