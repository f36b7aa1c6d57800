"""The NAS-FPN space (Ghiasi, Lin & Le 2019): a cell of ``cells`` merging cells.

Fixed: P6 = max-pool(C5) and P7 = max-pool(P6), as published. The pool starts as P3..P7
(entries 0..4); merging cell k (0-based) makes entry 5 + k. Every cell reads two different
entries, resamples them to its level, merges them by ``sum`` or ``attention`` and applies
ReLU -> 3x3 conv -> norm (``relu_conv``). The last five cells are the outputs, at P3, P4,
P5, P7, P6 in that order; they first add every earlier same-level entry no cell has read
(``absorb_unconsumed``).

Decisions of cell k, asked in this order (pool size 5 + k):

- ``cell{k}_input1``: the first input's pool index, ``range(5 + k)``.
- ``cell{k}_input2``: the second input, an index into the pool with the first removed,
  ``range(4 + k)`` (entry = index if index < input1 else index + 1): sampling without
  replacement with a fixed choice list.
- ``cell{k}_level``: ``3..7``, asked only of the first ``cells - 5`` cells.
- ``cell{k}_op``: ``sum`` | ``attention``.

Inputs keep their order: ``attention`` gates with the coarser input and, on a tie, with the
first (``nas.nets.builder``), so swapped inputs can be a different neck; the published cell is
encoded with its own order. Size: prod_k (5 + k)(4 + k) * 2^cells * 5^(cells - 5) distinct
decision records, one genotype each: 3.3e9 for 5 cells, 3.2e15 for the default 7, 4.2e18
for 8 (about half as many different necks, as ``sum`` ignores input order).
"""

from __future__ import annotations

from nas.genotype import LEVELS, NUM_INPUTS, Genotype, Node
from search_spaces.base import (
    MAX_POOLED_EXTRA_LEVELS,
    Chooser,
    GenotypeField,
    SearchSpace,
    check_int,
    fix_outputs,
    node_field,
    pick_distinct,
)

OUTPUT_LEVELS = (3, 4, 5, 7, 6)  # the levels of the last five cells, as published
OPS = ("sum", "attention")

# What every merging cell has (field, value, why); absorb_unconsumed depends on the cell.
_CELL_FIXED = (
    ("post", "relu_conv", "every merging cell ends in ReLU, 3x3 conv, norm"),
    ("up", "nearest", "inputs are upsampled by nearest-neighbour interpolation"),
    ("down", "max", "inputs are downsampled by max-pooling"),
)


class NasFpnSpace(SearchSpace):
    """NAS-FPN's merging-cell space; see the module docstring.

    Args:
        cells: merging cells in the cell, >= 5 (the last five are the outputs).
        repeats: how many times the cell is stacked when built.
        norm: the normalisation to build with.
    """

    name = "nasfpn"
    implied_post = "relu_conv"

    def __init__(self, cells: int = 7, repeats: int = 1, norm: str | None = "bn") -> None:
        super().__init__(repeats, norm)
        self.cells = check_int("cells", cells, minimum=len(OUTPUT_LEVELS))

    def _walk(self, chooser: Chooser) -> Genotype:
        chooser.fixed(
            "nodes",
            "the number of nodes",
            self.cells,
            lambda g: len(g.nodes),
            f"{self.cells} merging cells, option cells",
        )
        extra = chooser.fixed(
            "extra_levels",
            "the extra levels",
            MAX_POOLED_EXTRA_LEVELS,
            lambda g: g.extra_levels,
            "P6 and P7 are max-pooled, as published",
        )
        first_output = self.cells - len(OUTPUT_LEVELS)
        nodes = []
        for k in range(self.cells):
            index = NUM_INPUTS + k
            where = f"node {index}"
            chooser.fixed(
                where,
                "the number of inputs",
                2,
                _input_count(k),
                "a merging cell reads two",
            )
            inputs = pick_distinct(chooser, (f"cell{k}_input1", f"cell{k}_input2"), range(index), where, k)
            is_output = k >= first_output
            if is_output:
                level = chooser.fixed(
                    where,
                    "level",
                    OUTPUT_LEVELS[k - first_output],
                    node_field(k, "level"),
                    "the last five cells are the outputs P3, P4, P5, P7, P6, in that order",
                )
            else:
                level = int(chooser.choose(f"cell{k}_level", LEVELS, where, node_field(k, "level")))
            op = str(chooser.choose(f"cell{k}_op", OPS, where, node_field(k, "combine")))
            for field, value, reason in _CELL_FIXED:
                chooser.fixed(where, field, value, node_field(k, field), reason)
            chooser.fixed(
                where,
                "absorb_unconsumed",
                is_output,
                node_field(k, "absorb_unconsumed"),
                "exactly the output cells (the last five) absorb unread same-level entries",
            )
            nodes.append(Node(level, inputs, combine=op, post="relu_conv", absorb_unconsumed=is_output))
        # Outputs in level order: the output cells are made at P3, P4, P5, P7, P6.
        outputs = [NUM_INPUTS + first_output + OUTPUT_LEVELS.index(level) for level in LEVELS]
        fix_outputs(chooser, outputs, "the outputs are the last five cells")
        return Genotype.create(nodes, outputs, extra)


def _input_count(position: int) -> GenotypeField:
    """Reads how many inputs the genotype's node at ``position`` has."""
    return lambda genotype: len(genotype.nodes[position].inputs)
