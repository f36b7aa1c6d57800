"""Search spaces: published necks are points, random samples round-trip, errors name the node."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import optuna
import pytest
import torch
from optuna.trial import FixedTrial

from fixed_necks.bifpn import bifpn_genotype
from fixed_necks.fpn import fpn_genotype
from fixed_necks.nasfpn import nasfpn_genotype
from fixed_necks.panet import panet_genotype
from nas.genotype import LEVELS, Genotype, GenotypeError, Node
from nas.nets.builder import GenotypeNeck
from search_spaces import SPACES, FusionSpace, NasFpnSpace, SearchSpace, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def unnamed(genotype: Genotype) -> Genotype:
    return dataclasses.replace(genotype, name="")


def random_samples(
    space: SearchSpace, count: int, seed: int = 0
) -> list[tuple[Genotype, optuna.trial.Trial]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []
    for _ in range(count):
        trial = study.ask()
        samples.append((space.sample(trial), trial))
        study.tell(trial, 0.0)
    return samples


PUBLISHED = [
    ("nasfpn", nasfpn_genotype),
    ("fusion", fpn_genotype),
    ("fusion", lambda: fpn_genotype("maxpool")),
    ("fusion", panet_genotype),
    ("fusion", bifpn_genotype),
]


@pytest.mark.parametrize(
    ("space_name", "make"), PUBLISHED, ids=["nasfpn", "fpn", "fpn_maxpool", "panet", "bifpn"]
)
def test_published_necks_are_points(space_name: str, make: Callable[[], Genotype]) -> None:
    space, genotype = get_space(space_name), make()
    decisions = space.encode(genotype)
    decoded = space.sample(FixedTrial(decisions))
    assert decoded == unnamed(genotype)
    assert decoded.outputs == genotype.outputs
    assert space.encode(decoded) == decisions


def test_fusion_offers_aspp_as_a_post_op() -> None:
    """BiFPN with DetectoRS' ASPP after every other node is a point of the space, and builds."""
    bifpn = bifpn_genotype()
    nodes = [dataclasses.replace(n, post="aspp") if i % 2 else n for i, n in enumerate(bifpn.nodes)]
    genotype = Genotype.create(nodes, bifpn.outputs, bifpn.extra_levels)
    space = FusionSpace()
    decisions = space.encode(genotype)
    assert [v for k, v in decisions.items() if k.endswith("_post")].count("aspp") == len(nodes) // 2
    assert space.sample(FixedTrial(decisions)) == genotype
    assert ">aspp" in space.summary(genotype)
    neck = GenotypeNeck(genotype, [16, 32, 64], 16, norm="bn").eval()
    with torch.no_grad():
        out = neck([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 64, 2, 2)])
    assert [tuple(x.shape) for x in out.values()] == [(1, 16, s, s) for s in (8, 4, 2, 1, 1)]


def test_nasfpn_encoding_keeps_the_published_input_order() -> None:
    space = NasFpnSpace()
    decisions = space.encode(nasfpn_genotype())
    # Cell 0 is attention(P4, P6): input1 is entry 1; entry 3 is index 2 once entry 1 is removed.
    assert (decisions["cell0_input1"], decisions["cell0_input2"], decisions["cell0_op"]) == (
        1,
        2,
        "attention",
    )
    assert "cell2_level" not in decisions  # the output cells' levels are fixed
    # Attention with equal-level inputs gates with the first, so the swapped cell is another point.
    nodes = list(nasfpn_genotype().nodes)
    nodes[3] = dataclasses.replace(nodes[3], inputs=(7, 6))  # P4 output: sum of P3 output and P4 node
    swapped = Genotype.create(nodes, [7, 8, 9, 11, 10], nasfpn_genotype().extra_levels)
    swapped_decisions = space.encode(swapped)
    assert (swapped_decisions["cell3_input1"], swapped_decisions["cell3_input2"]) == (7, 6)
    assert space.sample(FixedTrial(swapped_decisions)).nodes[3].inputs == (7, 6)


FUSION_KINDS = {"level", "combine", "post", "down", "down_far"} | {
    f"input{j}_{mode}" for j in (1, 2, 3) for mode in ("none", "maxpool")
}
SAMPLED = [  # space, options, samples, the kinds of per-node decision the samples must reach
    ("nasfpn", {}, 200, {"input1", "input2", "level", "op"}),
    ("nasfpn", {"cells": 5}, 50, {"input1", "input2", "op"}),  # all five cells are outputs
    ("fusion", {}, 200, FUSION_KINDS),
    ("fusion", {"max_nodes": 6}, 50, FUSION_KINDS),
]


@pytest.mark.parametrize(("space_name", "options", "count", "kinds"), SAMPLED)
def test_random_samples_round_trip(space_name: str, options: dict, count: int, kinds: set[str]) -> None:
    space = get_space(space_name, **options)
    choices: dict[str, tuple] = {}
    for genotype, trial in random_samples(space, count):
        assert Genotype.from_json(genotype.to_json()) == genotype  # valid on re-validation too
        decisions = space.encode(genotype)
        assert decisions == trial.params
        assert space.sample(FixedTrial(decisions)) == genotype
        assert space.summary(genotype).count("*") == 5  # one output a level
        for name, distribution in trial.distributions.items():
            assert choices.setdefault(name, distribution.choices) == distribution.choices, name
    per_node = [re.fullmatch(r"(?:cell|node)\d+_(.+)", name) for name in choices]
    assert {match[1] for match in per_node if match} == kinds


def test_fusion_outputs_are_each_levels_last_node() -> None:
    for genotype, _ in random_samples(FusionSpace(), 100, seed=1):
        last = {node.level: 5 + i for i, node in enumerate(genotype.nodes)}
        assert genotype.outputs == tuple(last[level] for level in LEVELS)


def test_fusion_far_downsampling_offers_no_conv() -> None:
    samples = random_samples(FusionSpace(), 200, seed=2)
    far = [(g, t) for g, t in samples if any(name.endswith("_down_far") for name in t.params)]
    assert far, "no sample read an input two or more levels finer"
    for _, trial in far:
        for name, distribution in trial.distributions.items():
            if name.endswith("_down_far"):
                assert distribution.choices == ("max", "subsample")


def test_fusion_with_five_nodes_forces_one_node_per_level() -> None:
    for genotype, trial in random_samples(FusionSpace(max_nodes=5), 20):
        assert [node.level for node in genotype.nodes] == list(LEVELS)
        assert not any(name.endswith("_level") for name in trial.params)


def _with_node(genotype: Genotype, index: int, **changes) -> Genotype:
    nodes = list(genotype.nodes)
    nodes[index - 5] = dataclasses.replace(nodes[index - 5], **changes)
    return Genotype.create(nodes, genotype.outputs, genotype.extra_levels)


def _fpn_with_p7_first() -> Genotype:
    nodes = list(fpn_genotype().nodes[:8])
    nodes += [Node(level=7, inputs=(12,), down="subsample"), Node(level=6, inputs=(12,), down="conv")]
    return Genotype.create(nodes, [10, 11, 12, 14, 13])


def _fpn_with_four_input_node() -> Genotype:
    nodes = list(fpn_genotype().nodes)
    nodes[4] = Node(level=3, inputs=(0, 5, 6, 8))
    return Genotype.create(nodes, [10, 11, 12, 13, 14])


OUTSIDE = [
    ("nasfpn", {}, bifpn_genotype, r"^nodes: the number of nodes is 8, but this space has 7"),
    ("nasfpn", {"cells": 8}, bifpn_genotype, r"^node 5: 'weighted' is not a choice of cell0_op"),
    (
        "nasfpn",
        {},
        lambda: _with_node(nasfpn_genotype(), 7, absorb_unconsumed=False),
        r"^node 7: absorb_unconsumed",
    ),
    ("nasfpn", {}, lambda: _with_node(nasfpn_genotype(), 6, post="conv"), r"^node 6: post is 'conv'"),
    ("fusion", {}, nasfpn_genotype, r"^node 5: 'relu_conv' is not a choice of node5_post"),
    ("fusion", {}, _fpn_with_p7_first, r"^node 13: level is 7, but this space has 6"),
    ("fusion", {}, _fpn_with_four_input_node, r"^node 9: 'sum4' is not a choice of node9_combine"),
    ("fusion", {}, lambda: _with_node(fpn_genotype(), 8, down="conv"), r"^node 8: down is 'conv'"),
    ("fusion", {"max_nodes": 12}, panet_genotype, r"^node.*14 is not a choice of nodes"),
    (
        "fusion",
        {},
        lambda: Genotype.create(fpn_genotype().nodes, [10, 8, 12, 13, 14]),
        r"^outputs: P4 is 8, but this space has 11",
    ),
]


@pytest.mark.parametrize(("space_name", "options", "make", "message"), OUTSIDE)
def test_genotypes_outside_a_space_are_rejected_naming_the_node(
    space_name: str, options: dict, make: Callable[[], Genotype], message: str
) -> None:
    with pytest.raises(GenotypeError, match=message):
        get_space(space_name, **options).encode(make())


def test_get_space_options_and_errors() -> None:
    assert set(SPACES) == {"nasfpn", "fusion"}
    space = get_space("nasfpn", cells=9, repeats=3, norm="gn")
    assert (space.cells, space.repeats, space.norm) == (9, 3, "gn")
    genotype, _ = random_samples(space, 1)[0]
    assert len(genotype.nodes) == 9
    assert (get_space("fusion").max_nodes, get_space("fusion").norm) == (16, "bn")
    with pytest.raises(KeyError, match="unknown search space 'nope' \\(known: nasfpn, fusion\\)"):
        get_space("nope")
    for name, options, message in [
        ("nasfpn", {"cells": 4}, "cells must be an integer >= 5, got 4"),
        ("nasfpn", {"cells": "7"}, "cells must be an integer >= 5, got '7'"),
        ("fusion", {"max_nodes": 3}, "max_nodes must be an integer >= 5, got 3"),
        ("fusion", {"repeats": 0}, "repeats must be an integer >= 1, got 0"),
        ("fusion", {"norm": "ln"}, "norm must be one of bn, gn, none, got 'ln'"),
        (
            "fusion",
            {"cells": 7},
            "search space 'fusion' has no option 'cells' \\(options: max_nodes, repeats, norm\\)",
        ),
    ]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            get_space(name, **options)


def test_summaries() -> None:
    assert NasFpnSpace().summary(nasfpn_genotype()) == (
        "P6=max(P5) P7=max(P6) P4=att(P4,P6) P4=sum(P4,n5) P3*=sum(P3,n6) P4*=sum(n6,n7) "
        "P5*=att(n7,n8)+P5 P7*=att(n6,n9)+P7 P6*=att(n9,n10)"
    )
    assert (
        FusionSpace()
        .summary(panet_genotype())
        .endswith(
            "P6=conv(n12) P7=relu_conv(n13) P4*=sum(n10,n11)/conv>conv P5*=sum(n15,n12)/conv>conv "
            "P6*=sum(n16,n13)/conv>conv P7*=sum(n17,n14)/conv>conv"
        )
    )
    # Nodes that reach no output are left out.
    dead = Genotype.create([*fpn_genotype().nodes, Node(level=3, inputs=(0,))], [10, 11, 12, 13, 14])
    assert FusionSpace().summary(dead) == FusionSpace().summary(fpn_genotype())


@pytest.mark.parametrize("space", [NasFpnSpace(), FusionSpace(repeats=2)], ids=["nasfpn", "fusion"])
def test_sampled_genotypes_build_and_run(space: SearchSpace) -> None:
    torch.manual_seed(0)
    features = [torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8), torch.randn(1, 64, 4, 4)]
    for genotype, _ in random_samples(space, 3, seed=3):
        neck = GenotypeNeck(genotype, [16, 32, 64], 16, repeats=space.repeats, norm=space.norm).eval()
        with torch.no_grad():
            out = neck(features)
        assert list(out) == ["P3", "P4", "P5", "P6", "P7"]
        assert [tuple(x.shape) for x in out.values()] == [(1, 16, s, s) for s in (16, 8, 4, 2, 1)]
        assert all(torch.isfinite(x).all() for x in out.values())
