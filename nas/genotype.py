"""The neck-graph IR: a genotype is a DAG over a pool of feature maps.

The pool starts with five entries, P3..P7 at indices 0..4. Entries 0..2 are the backbone's
C3..C5 (at the backbone's widths). Entries 3 and 4 (P6, P7) are made by the genotype's
``extra_levels`` -- two single-input nodes, e.g. a stride-2 max-pool of C5 -- or are absent
when ``extra_levels`` is empty (FPN makes its P6/P7 from its *output* P5, as ordinary nodes).
Every node of ``nodes`` reads earlier pool entries, lives at one level and appends one entry,
numbered on from 5. ``outputs`` names the node that is each of P3..P7.

A node resamples each input to its level (1x1 conv where widths differ; ``up`` to go to a
finer level, ``down`` to a coarser one), combines them (``combine``), optionally adds every
earlier same-level entry that no node consumed (NAS-FPN's rule for output nodes,
``absorb_unconsumed``) and applies ``post``. Width, repeats and normalisation are build
arguments (see ``nas.nets.builder``), never part of the graph: with ``repeats > 1`` the cell's
outputs P3..P7 become the next repeat's pool entries 0..4.

JSON form::

    {"format_version": 1, "name": "...", "extra_levels": [node, node] | [],
     "nodes": [{"level": 4, "inputs": [1, 3], "combine": "attention", "post": "relu_conv",
                "up": "nearest", "down": "max", "absorb_unconsumed": false}, ...],
     "outputs": {"P3": 7, "P4": 8, "P5": 9, "P6": 11, "P7": 10}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import GenotypeError

FORMAT_VERSION = 1
LEVELS = (3, 4, 5, 6, 7)
NUM_INPUTS = len(LEVELS)  # pool entries 0..4 are the pyramid inputs P3..P7
BACKBONE_INPUTS = 3  # entries 0..2 come from the backbone (C3..C5)


@dataclass(frozen=True)
class Word:
    """One word of the genotype's vocabulary: what it does, and how it is shown.

    ``symbol`` is written in a drawn node's box (``nas.inspect.draw``), ``short`` in a one-line
    text of the genotype (search-space labels, leaderboards); "" shows nothing. Every module that
    implements or shows a word (``nas.nets.ops``, ``nas.export.codegen``, ``nas.inspect.draw``,
    ``search_spaces``) keys into these tables; ``tests/test_vocabulary.py`` fails when one misses
    a word.
    """

    meaning: str
    symbol: str
    short: str


COMBINES = {
    "sum": Word("element-wise sum", "+", "sum"),
    "attention": Word(
        "NAS-FPN global attention: coarser + finer * sigmoid(global max-pool(coarser))", "att", "att"
    ),
    "weighted": Word(
        "BiFPN fast normalised fusion: sum(relu(w_i) x_i) / (eps + sum relu(w_j))", "w+", "wsum"
    ),
}
UPSAMPLES = {"nearest": Word("nearest-neighbour interpolation to the level's size", "nearest", "nearest")}
DOWNSAMPLES = {
    "max": Word("max-pool, kernel stride+1, after a 1x1 conv where widths differ", "max", "max"),
    "subsample": Word(
        "kernel-1 max-pool (take every 2^k-th pixel), as torchvision's LastLevelMaxPool",
        "subsample",
        "subsample",
    ),
    "conv": Word("3x3 stride-2 conv (one level only)", "conv", "conv"),
    "relu_conv": Word(
        "ReLU then 3x3 stride-2 conv (one level only), as RetinaNet's P7", "relu-conv", "relu_conv"
    ),
}
CONV_DOWNSAMPLES = ("conv", "relu_conv")
POSTS = {
    "none": Word("nothing", "", ""),
    "conv": Word("3x3 conv, norm", "conv", "conv"),
    "relu_conv": Word("ReLU, 3x3 conv, norm (NAS-FPN)", "relu-conv", "rconv"),
    "swish_sepconv": Word("swish, depthwise-separable 3x3 conv, norm (BiFPN)", "swish-sep", "sep"),
    "aspp": Word(
        "ASPP (DetectoRS): 1x1, 3x3 dilation 3, 3x3 dilation 6 and global-pool branches, concatenated",
        "aspp",
        "aspp",
    ),
}


@dataclass(frozen=True)
class Node:
    """One pool entry made from earlier ones.

    Attributes:
        level: pyramid level 3..7 the node lives at (stride 2**level).
        inputs: pool indices it reads, in order; one (a pure resample) or more.
        combine: how the resampled inputs are merged, a key of ``COMBINES``.
        post: what follows the combine, a key of ``POSTS``.
        up: how coarser inputs are upsampled to this level, a key of ``UPSAMPLES``.
        down: how finer inputs are downsampled to this level, a key of ``DOWNSAMPLES``.
        absorb_unconsumed: first add every earlier same-level entry that no node read.
    """

    level: int
    inputs: tuple[int, ...]
    combine: str = "sum"
    post: str = "none"
    up: str = "nearest"
    down: str = "max"
    absorb_unconsumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "inputs": list(self.inputs),
            "combine": self.combine,
            "post": self.post,
            "up": self.up,
            "down": self.down,
            "absorb_unconsumed": self.absorb_unconsumed,
        }


@dataclass(frozen=True)
class Genotype:
    """A neck as data: see the module docstring. Validated on construction.

    ``outputs`` may be given as ``{"P3": index, ...}`` or as five indices in level order.
    """

    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]  # pool index of the node that is P3, P4, ..., P7
    extra_levels: tuple[Node, ...] = ()
    name: str = ""
    # Derived on validation: per pool entry its level, and per node the extra entries it absorbs.
    entry_levels: tuple[int, ...] = field(init=False, compare=False, repr=False)
    absorbed: tuple[tuple[int, ...], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: fields are normalised once, here
        set_field(self, "nodes", tuple(self.nodes))
        set_field(self, "extra_levels", tuple(self.extra_levels))
        levels, absorbed, outputs = _validate(self.nodes, self.outputs, self.extra_levels)
        set_field(self, "outputs", outputs)
        set_field(self, "entry_levels", levels)
        set_field(self, "absorbed", absorbed)

    @classmethod
    def create(
        cls,
        nodes: list[Node] | tuple[Node, ...],
        outputs: dict[str, int] | list[int] | tuple[int, ...],
        extra_levels: list[Node] | tuple[Node, ...] = (),
        name: str = "",
    ) -> Genotype:
        """Validates and returns a genotype; raises ``GenotypeError`` naming node and reason."""
        return cls(tuple(nodes), outputs, tuple(extra_levels), name)  # type: ignore[arg-type]

    @property
    def num_entries(self) -> int:
        return NUM_INPUTS + len(self.nodes)

    def node(self, index: int) -> Node:
        """The node that makes pool entry ``index`` (>= NUM_INPUTS)."""
        return self.nodes[index - NUM_INPUTS]

    def reads(self, index: int) -> tuple[int, ...]:
        """What node ``index`` reads: its inputs, then the entries it absorbs."""
        i = index - NUM_INPUTS
        return self.nodes[i].inputs + self.absorbed[i]

    def used_entries(self) -> set[int]:
        """Pool entries some output depends on: nodes, what they read, the extra levels' sources."""
        used: set[int] = set()
        stack = list(self.outputs)
        while stack:
            index = stack.pop()
            if index in used:
                continue
            used.add(index)
            if index >= NUM_INPUTS:
                stack.extend(self.reads(index))
            elif index >= BACKBONE_INPUTS and self.extra_levels:
                stack.extend(self.extra_levels[index - BACKBONE_INPUTS].inputs)
        return used

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "extra_levels": [n.to_dict() for n in self.extra_levels],
            "nodes": [n.to_dict() for n in self.nodes],
            "outputs": {f"P{level}": i for level, i in zip(LEVELS, self.outputs)},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        return _parse(data)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return _parse(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def load_genotype(path: str | Path) -> Genotype:
    """Reads a genotype JSON file; every error message starts with the file's name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise GenotypeError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return Genotype.from_json(text)
    except GenotypeError as e:
        raise GenotypeError(f"{path}: {e}") from None


# --- parsing -------------------------------------------------------------------------------

_NODE_KEYS = ("level", "inputs", "combine", "post", "up", "down", "absorb_unconsumed")
_TOP_KEYS = ("format_version", "name", "extra_levels", "nodes", "outputs")


def _parse(data: Any) -> Genotype:
    if not isinstance(data, dict):
        raise GenotypeError(f"a genotype is a JSON object, got {_type_name(data)}")
    _reject_unknown(data, _TOP_KEYS, "genotype")
    version = data.get("format_version")
    if version is None:
        raise GenotypeError("missing 'format_version'")
    if version != FORMAT_VERSION:
        raise GenotypeError(
            f"format_version {version!r} is not supported (this nasfpn reads {FORMAT_VERSION})"
        )
    name = data.get("name", "")
    if not isinstance(name, str):
        raise GenotypeError(f"'name' must be a string, got {_type_name(name)}")
    extra = _list_field(data, "extra_levels", "genotype", default=[])
    nodes = _list_field(data, "nodes", "genotype")
    outputs = data.get("outputs")
    if not isinstance(outputs, dict):
        raise GenotypeError(f"'outputs' must be an object {{\"P3\": index, ...}}, got {_type_name(outputs)}")
    extra_nodes = [_parse_node(d, f"extra level P{6 + i}") for i, d in enumerate(extra)]
    cell_nodes = [_parse_node(d, f"node {NUM_INPUTS + i}") for i, d in enumerate(nodes)]
    return Genotype.create(cell_nodes, outputs, extra_nodes, name)


def _parse_node(data: Any, where: str) -> Node:
    if not isinstance(data, dict):
        raise GenotypeError(f"{where}: a node is a JSON object, got {_type_name(data)}")
    _reject_unknown(data, _NODE_KEYS, where)
    for key in ("level", "inputs"):
        if key not in data:
            raise GenotypeError(f"{where}: missing '{key}'")
    level = data["level"]
    if not _is_int(level):
        raise GenotypeError(f"{where}: 'level' must be an integer, got {_type_name(level)}")
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not all(_is_int(i) for i in inputs):
        raise GenotypeError(f"{where}: 'inputs' must be a list of integers, got {json.dumps(inputs)[:60]}")
    strings = {}
    for key in ("combine", "post", "up", "down"):
        value = data.get(key, getattr(Node, key))
        if not isinstance(value, str):
            raise GenotypeError(f"{where}: '{key}' must be a string, got {_type_name(value)}")
        strings[key] = value
    absorb = data.get("absorb_unconsumed", False)
    if not isinstance(absorb, bool):
        raise GenotypeError(f"{where}: 'absorb_unconsumed' must be true or false, got {_type_name(absorb)}")
    return Node(level=level, inputs=tuple(inputs), absorb_unconsumed=absorb, **strings)


def _outputs_from_mapping(outputs: dict[str, Any]) -> tuple[int, ...]:
    names = [f"P{level}" for level in LEVELS]
    for key in outputs:
        if key not in names:
            raise GenotypeError(f"outputs: unknown key {key!r} (expected {', '.join(names)})")
    result = []
    for name in names:
        if name not in outputs:
            raise GenotypeError(f"outputs: level {name} is left without an output")
        index = outputs[name]
        if not _is_int(index):
            raise GenotypeError(f"outputs: {name} must be a pool index (integer), got {_type_name(index)}")
        result.append(index)
    return tuple(result)


def _reject_unknown(data: dict, known: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in known:
            raise GenotypeError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


def _list_field(data: dict, key: str, where: str, default: list | None = None) -> list:
    value = data.get(key, default)
    if value is None:
        raise GenotypeError(f"{where}: missing '{key}'")
    if not isinstance(value, list):
        raise GenotypeError(f"{where}: '{key}' must be a list, got {_type_name(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


# --- validation ----------------------------------------------------------------------------


def _validate(
    nodes: tuple[Node, ...],
    outputs: dict[str, Any] | list[int] | tuple[int, ...],
    extra: tuple[Node, ...],
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Checks the graph; returns per entry its level, per node what it absorbs, the outputs."""
    if len(extra) not in (0, 2):
        raise GenotypeError(f"extra_levels: give two nodes (P6, P7) or none, got {len(extra)}")
    if not nodes:
        raise GenotypeError("a genotype needs at least one node")
    levels = list(LEVELS)
    available = list(range(BACKBONE_INPUTS))  # entries readable so far
    for i, node in enumerate(extra):
        where, expected = f"extra level P{6 + i}", 6 + i
        if node.level != expected:
            raise GenotypeError(f"{where}: level must be {expected}, got {node.level}")
        if len(node.inputs) != 1:
            raise GenotypeError(f"{where}: reads exactly one entry, got {len(node.inputs)}")
        if node.absorb_unconsumed:
            raise GenotypeError(f"{where}: 'absorb_unconsumed' applies to cell nodes only")
        _check_node(node, where, available, levels)
        available.append(BACKBONE_INPUTS + i)
    available_note = "" if extra else " (P6 and P7, entries 3 and 4, are absent: extra_levels is empty)"
    consumed = [0] * NUM_INPUTS
    absorbed: list[tuple[int, ...]] = []
    for i, node in enumerate(nodes):
        index = NUM_INPUTS + i
        _check_node(node, f"node {index}", available, levels, available_note)
        for j in node.inputs:
            consumed[j] += 1
        extra_inputs: tuple[int, ...] = ()
        if node.absorb_unconsumed:
            extra_inputs = tuple(j for j in available if consumed[j] == 0 and levels[j] == node.level)
            for j in extra_inputs:
                consumed[j] += 1
        absorbed.append(extra_inputs)
        levels.append(node.level)
        consumed.append(0)
        available.append(index)
    # Outputs last: a message about a node beats one about the outputs that depend on it.
    outputs = _outputs_from_mapping(outputs) if isinstance(outputs, dict) else tuple(outputs)
    _check_outputs(outputs, levels)
    return tuple(levels), tuple(absorbed), outputs


def _check_node(node: Node, where: str, available: list[int], levels: list[int], note: str = "") -> None:
    if node.level not in LEVELS:
        raise GenotypeError(f"{where}: level {node.level} is outside the pyramid P3..P7")
    for key, table in (("combine", COMBINES), ("post", POSTS), ("up", UPSAMPLES), ("down", DOWNSAMPLES)):
        value = getattr(node, key)
        if value not in table:
            raise GenotypeError(f"{where}: unknown {key} op {value!r} (known: {', '.join(table)})")
    if not node.inputs:
        raise GenotypeError(f"{where}: has no inputs")
    for k, j in enumerate(node.inputs):
        if j not in available:
            readable = f"0..{max(available)}" if not note else ", ".join(map(str, available))
            raise GenotypeError(f"{where}: input {j} is not yet in the pool (readable: {readable}){note}")
        if node.inputs.index(j) != k:
            raise GenotypeError(f"{where}: input {j} is listed twice")
        gap = node.level - levels[j]
        if gap > 1 and node.down in CONV_DOWNSAMPLES:
            raise GenotypeError(
                f"{where}: '{node.down}' downsampling spans one level, but input {j} is at "
                f"P{levels[j]}, {gap} levels below P{node.level}"
            )
    arity = len(node.inputs)
    if node.combine == "attention" and arity != 2:
        raise GenotypeError(f"{where}: 'attention' combines exactly two inputs, got {arity}")
    if node.combine == "weighted" and arity < 2:
        raise GenotypeError(f"{where}: 'weighted' combines two or more inputs, got {arity}")


def _check_outputs(outputs: tuple[int, ...], levels: list[int]) -> None:
    if len(outputs) != len(LEVELS):
        raise GenotypeError(f"outputs: give one node per level P3..P7, got {len(outputs)}")
    for level, index in zip(LEVELS, outputs):
        if not NUM_INPUTS <= index < len(levels):
            raise GenotypeError(
                f"outputs: P{level} is entry {index}, which is not a node "
                f"(nodes are {NUM_INPUTS}..{len(levels) - 1})"
            )
        if levels[index] != level:
            raise GenotypeError(f"outputs: P{level} is node {index}, which is at level P{levels[index]}")
    if len(set(outputs)) != len(outputs):
        raise GenotypeError("outputs: one node is given for two levels")
