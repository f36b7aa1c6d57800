"""What every search space is, and the machinery its decisions run on.

A space is written once, as a *walk*: ``_walk(chooser)`` makes a genotype node by node,
taking every decision from ``chooser.choose(name, choices, ...)`` and every value the space
fixes from ``chooser.fixed(...)``. Two choosers run the same walk:

- ``TrialChooser`` asks an Optuna trial (``sample``): define-by-run, categorical only.
- ``GenotypeChooser`` answers each decision from a given genotype and checks each fixed value
  against it (``encode``); the first value outside the space raises ``GenotypeError`` naming
  the node and the reason.

So decoding and encoding cannot drift apart: ``sample(FixedTrial(encode(g))) == g`` holds by
construction, as long as every field of every node goes through one of the two calls.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from optuna.trial import BaseTrial

from nas.genotype import (
    BACKBONE_INPUTS,
    COMBINES,
    DOWNSAMPLES,
    LEVELS,
    NUM_INPUTS,
    POSTS,
    Genotype,
    GenotypeError,
    Node,
)
from nas.settings import NORMS

Choice = int | str
T = TypeVar("T")
GenotypeField = Callable[[Genotype], Any]

# P6 = max-pool(C5), P7 = max-pool(P6): NAS-FPN's and BiFPN's extra levels.
MAX_POOLED_EXTRA_LEVELS = (Node(level=6, inputs=(2,), down="max"), Node(level=7, inputs=(3,), down="max"))


class Chooser(abc.ABC):
    """Where a walk through a space takes its decisions from."""

    @abc.abstractmethod
    def choose(self, name: str, choices: Sequence[Choice], where: str, wanted: GenotypeField) -> Choice:
        """The decision ``name``, one of ``choices``; ``wanted`` reads it off a genotype."""

    @abc.abstractmethod
    def fixed(self, where: str, what: str, value: T, actual: GenotypeField, reason: str) -> T:
        """``value``, which the space fixes; ``actual`` reads the genotype's own value of it."""


class TrialChooser(Chooser):
    """Asks an Optuna trial; fixed values are taken as they are."""

    def __init__(self, trial: BaseTrial) -> None:
        self.trial = trial

    def choose(self, name: str, choices: Sequence[Choice], where: str, wanted: GenotypeField) -> Choice:
        # optuna types the pick from a list of ints and strings as any categorical value
        return self.trial.suggest_categorical(name, list(choices))  # type: ignore[return-value]

    def fixed(self, where: str, what: str, value: T, actual: GenotypeField, reason: str) -> T:
        return value


class GenotypeChooser(Chooser):
    """Answers from ``genotype`` and records the decisions in ``params``."""

    def __init__(self, genotype: Genotype) -> None:
        self.genotype = genotype
        self.params: dict[str, Choice] = {}

    def choose(self, name: str, choices: Sequence[Choice], where: str, wanted: GenotypeField) -> Choice:
        value = wanted(self.genotype)
        if value not in choices:
            raise GenotypeError(
                f"{where}: {value!r} is not a choice of {name} ({', '.join(map(repr, choices))})"
            )
        self.params[name] = value
        return value

    def fixed(self, where: str, what: str, value: T, actual: GenotypeField, reason: str) -> T:
        found = actual(self.genotype)
        if found != value:
            raise GenotypeError(
                f"{where}: {what} is {describe(found)}, but this space has {describe(value)} ({reason})"
            )
        return value


class SearchSpace(abc.ABC):
    """A way of choosing a genotype by named categorical decisions, and of encoding one back.

    Attributes:
        name: the registry name.
        repeats: how many times the cell is stacked when a sampled genotype is built.
        norm: the normalisation to build it with (``bn``, ``gn``, ``none``/None).
    """

    name: ClassVar[str]
    # A post op every node of the space has; summaries leave it out.
    implied_post: ClassVar[str | None] = None

    def __init__(self, repeats: int = 1, norm: str | None = "bn") -> None:
        self.repeats = check_int("repeats", repeats, minimum=1)
        if norm is not None and norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm = norm

    def sample(self, trial: BaseTrial) -> Genotype:
        """Asks ``trial`` for the decisions (``suggest_categorical`` only); always a valid genotype."""
        return self._walk(TrialChooser(trial))

    def encode(self, genotype: Genotype) -> dict[str, Choice]:
        """The decisions that make ``genotype`` (its name aside).

        Raises ``GenotypeError`` naming the node and the reason when it is not a point of the space.
        """
        chooser = GenotypeChooser(genotype)
        self._walk(chooser)
        return chooser.params

    def summary(self, genotype: Genotype) -> str:
        """One line for leaderboards: each node that reaches an output, in pool order.

        ``P4=att(P4,P6)``: a P4 node attending over entries P4 and P6; ``n9`` is pool entry 9;
        ``*`` marks an output; ``+P5`` an absorbed entry; ``>conv`` the post op; ``/conv`` a
        non-default downsampling op; a single-input node shows its resampling op, if any.
        """
        used = genotype.used_entries()
        parts = [
            _node_text(f"P{node.level}", node, genotype.entry_levels)
            for k, node in enumerate(genotype.extra_levels)
            if BACKBONE_INPUTS + k in used
        ]
        for i, node in enumerate(genotype.nodes):
            index = NUM_INPUTS + i
            if index not in used:
                continue
            target = f"P{node.level}{'*' if index in genotype.outputs else ''}"
            text = _node_text(target, node, genotype.entry_levels)
            text += "".join(f"+{entry_name(j)}" for j in genotype.absorbed[i])
            if node.post not in ("none", self.implied_post):
                text += f">{POSTS[node.post].short}"
            parts.append(text)
        return " ".join(parts)

    @abc.abstractmethod
    def _walk(self, chooser: Chooser) -> Genotype:
        """Makes the genotype, every decision through ``chooser.choose``, every fixed value
        through ``chooser.fixed``."""


# --- helpers shared by the spaces ----------------------------------------------------------


def node_field(position: int, attr: str) -> GenotypeField:
    """Reads ``attr`` of the genotype's node at ``position`` (0 = pool entry 5)."""
    return lambda genotype: getattr(genotype.nodes[position], attr)


def pick_distinct(
    chooser: Chooser, names: Sequence[str], pool: Sequence[int], where: str, position: int
) -> tuple[int, ...]:
    """Picks ``len(names)`` different entries of ``pool``, in order, for the node at ``position``.

    Decision ``names[j]`` is an index into what is left of ``pool`` once the earlier picks are
    removed, so its choice list (``range(len(pool) - j)``) is the same in every trial.
    """
    left = list(pool)
    picked: list[int] = []
    for j, name in enumerate(names):
        k = chooser.choose(name, range(len(left)), where, _index_in(left, position, j))
        picked.append(left.pop(int(k)))
    return tuple(picked)


def fix_outputs(chooser: Chooser, outputs: Sequence[int], reason: str) -> None:
    """Checks the genotype's outputs (P3..P7 in level order) against the space's ``outputs``."""
    for i, (level, output) in enumerate(zip(LEVELS, outputs)):
        chooser.fixed("outputs", f"P{level}", output, _output_field(i), reason)


def _output_field(i: int) -> GenotypeField:
    return lambda genotype: genotype.outputs[i]


def _index_in(left: list[int], position: int, j: int) -> GenotypeField:
    return lambda genotype: left.index(genotype.nodes[position].inputs[j])


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``; ValueError with a one-line message otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def entry_name(index: int) -> str:
    """``P3``..``P7`` for the pyramid entries 0..4, ``n<index>`` for nodes."""
    return f"P{3 + index}" if index < NUM_INPUTS else f"n{index}"


def _node_text(target: str, node: Node, levels: Sequence[int]) -> str:
    names = [entry_name(j) for j in node.inputs]
    if len(node.inputs) == 1:
        source = levels[node.inputs[0]]
        op = DOWNSAMPLES[node.down].short if source < node.level else "up" if source > node.level else ""
        return f"{target}={op}({names[0]})" if op else f"{target}={names[0]}"
    text = f"{target}={COMBINES[node.combine].short}({','.join(names)})"
    if node.down != "max" and any(levels[j] < node.level for j in node.inputs):
        text += f"/{DOWNSAMPLES[node.down].short}"
    return text


def describe(value: Any) -> str:
    """A value for an error message; extra levels as ``P6=max(P5) P7=max(P6)``."""
    if isinstance(value, tuple) and all(isinstance(n, Node) for n in value):
        return " ".join(_node_text(f"P{n.level}", n, LEVELS) for n in value) if value else "none"
    return repr(value)
