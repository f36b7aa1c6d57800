"""The weighted-fusion space: BiFPN-style graphs of 5 to ``max_nodes`` nodes.

FPN (RetinaNet's P6/P7), FPN with subsampled P6/P7, PANet and BiFPN are points of it.

Decisions, asked in this order:

- ``extra_levels``: ``none`` (P6/P7 are absent from the pool; nodes must make them, as in
  FPN) | ``maxpool`` (P6 = max-pool(C5), P7 = max-pool(P6), as in BiFPN).
- ``nodes``: the number of nodes, ``5..max_nodes``.

then for node e = 5, 6, ... (the pool entry it makes):

- ``node{e}_level``: ``3..7``. Not asked when as many nodes remain as levels still have no
  node: the node then takes the lowest such level. That rule guarantees every level a node.
- ``node{e}_combine``: the number of inputs and how they are combined: ``resample`` (one
  input: a lateral or pure resample) | ``sum2`` | ``weighted2`` | ``attention2`` | ``sum3`` |
  ``weighted3``.
- ``node{e}_input{j}_{extra_levels}``, j = 1..inputs: sampling without replacement over the
  R readable entries (0..2, then 3 and 4 if ``maxpool``, then the earlier nodes): an index
  into them with the earlier picks removed, ``range(R + 1 - j)``. R differs by two between
  the ``extra_levels`` modes, hence the mode in the name (a choice list is fixed per name).
- ``node{e}_down``: ``max`` | ``subsample`` | ``conv`` | ``relu_conv``, asked when the finer
  inputs are all one level below the node; ``node{e}_down_far``: ``max`` | ``subsample``
  (the conv ops span one level only) when one is further below; neither when no input is
  finer (``down`` is then ``max``).
- ``node{e}_post``: ``none`` | ``conv`` | ``swish_sepconv`` | ``aspp`` (DetectoRS' atrous
  spatial pyramid pooling, ``nas.nets.ops.ASPP``).

Upsampling is nearest; nodes never absorb. The outputs are the last node at each level (FPN,
PANet and BiFPN all follow that rule). Nodes that reach no output stay in the genotype and
are not built. Size: a node at pool entry e reads from R = e - 2 (``none``) or e (``maxpool``)
entries, so it has 5 levels x (R + 3R(R-1) + 2R(R-1)(R-2)) input/combine choices x 4 posts
x 1 to 4 downsamplings; summed over the node counts (Monte-Carlo estimate) that is about
1e79 decision records, each one genotype, for the default 16 nodes, 1e36 for 8, 1e18 for 5.
"""

from __future__ import annotations

from nas.genotype import BACKBONE_INPUTS, LEVELS, NUM_INPUTS, Genotype, GenotypeError, Node
from search_spaces.base import (
    MAX_POOLED_EXTRA_LEVELS,
    Chooser,
    GenotypeField,
    SearchSpace,
    check_int,
    describe,
    fix_outputs,
    node_field,
    pick_distinct,
)

EXTRA_LEVELS = {"none": (), "maxpool": MAX_POOLED_EXTRA_LEVELS}
COMBINES = {  # choice -> (combine, number of inputs)
    "resample": ("sum", 1),
    "sum2": ("sum", 2),
    "weighted2": ("weighted", 2),
    "attention2": ("attention", 2),
    "sum3": ("sum", 3),
    "weighted3": ("weighted", 3),
}
NEAR_DOWNS = ("max", "subsample", "conv", "relu_conv")
FAR_DOWNS = ("max", "subsample")
POSTS = ("none", "conv", "swish_sepconv", "aspp")


class FusionSpace(SearchSpace):
    """The weighted-fusion space; see the module docstring.

    Args:
        max_nodes: the most nodes a genotype may have, >= 5 (PANet has 14).
        repeats: how many times the cell is stacked when built.
        norm: the normalisation to build with.
    """

    name = "fusion"

    def __init__(self, max_nodes: int = 16, repeats: int = 1, norm: str | None = "bn") -> None:
        super().__init__(repeats, norm)
        self.max_nodes = check_int("max_nodes", max_nodes, minimum=len(LEVELS))

    def _walk(self, chooser: Chooser) -> Genotype:
        mode = str(chooser.choose("extra_levels", tuple(EXTRA_LEVELS), "extra_levels", _extra_levels_mode))
        count = int(
            chooser.choose("nodes", range(len(LEVELS), self.max_nodes + 1), "nodes", lambda g: len(g.nodes))
        )
        readable = list(range(NUM_INPUTS if EXTRA_LEVELS[mode] else BACKBONE_INPUTS))
        levels = list(LEVELS)  # per pool entry
        missing = set(LEVELS)  # levels without a node yet
        nodes = []
        for i in range(count):
            index = NUM_INPUTS + i
            where, prefix = f"node {index}", f"node{index}"
            if len(missing) == count - i:
                level = chooser.fixed(
                    where,
                    "level",
                    min(missing),
                    node_field(i, "level"),
                    "when only as many nodes remain as levels lack one, "
                    "they take those levels in ascending order",
                )
            else:
                level = int(chooser.choose(f"{prefix}_level", LEVELS, where, node_field(i, "level")))
            combine, arity = COMBINES[
                str(chooser.choose(f"{prefix}_combine", tuple(COMBINES), where, _combine(i)))
            ]
            names = [f"{prefix}_input{j}_{mode}" for j in range(1, arity + 1)]
            inputs = pick_distinct(chooser, names, readable, where, i)
            gap = max(level - levels[j] for j in inputs)  # > 0: some input is finer
            if gap <= 0:
                down = chooser.fixed(
                    where,
                    "down",
                    "max",
                    node_field(i, "down"),
                    "no input is finer, so the space writes 'max'",
                )
            else:
                name, choices = (
                    (f"{prefix}_down", NEAR_DOWNS) if gap == 1 else (f"{prefix}_down_far", FAR_DOWNS)
                )
                down = str(chooser.choose(name, choices, where, node_field(i, "down")))
            post = str(chooser.choose(f"{prefix}_post", POSTS, where, node_field(i, "post")))
            chooser.fixed(where, "up", "nearest", node_field(i, "up"), "upsampling is nearest")
            chooser.fixed(
                where, "absorb_unconsumed", False, node_field(i, "absorb_unconsumed"), "no node absorbs"
            )
            nodes.append(Node(level, inputs, combine, post, down=down))
            readable.append(index)
            levels.append(level)
            missing.discard(level)
        last = {node.level: NUM_INPUTS + i for i, node in enumerate(nodes)}
        outputs = [last[level] for level in LEVELS]
        fix_outputs(chooser, outputs, "each level's output is its last node")
        return Genotype.create(nodes, outputs, EXTRA_LEVELS[mode])


def _extra_levels_mode(genotype: Genotype) -> str:
    for mode, extra in EXTRA_LEVELS.items():
        if genotype.extra_levels == extra:
            return mode
    raise GenotypeError(
        f"extra_levels: {describe(genotype.extra_levels)} is not a choice of this space "
        f"(none, or maxpool: {describe(MAX_POOLED_EXTRA_LEVELS)})"
    )


def _combine(position: int) -> GenotypeField:
    def wanted(genotype: Genotype) -> str:
        node = genotype.nodes[position]
        arity = len(node.inputs)
        return "resample" if arity == 1 else f"{node.combine}{arity}"

    return wanted
