"""Every word of the genotype's vocabulary (``nas.genotype``: combines, resamplings, post ops)
is implemented, exported, drawn and spelt wherever a genotype goes: a word added to a table and
missed in one of those places fails here; and every name of the proxy's and the search's other
vocabularies (``nas.settings``: detectors, RoI modes; the controllers) has its one builder."""

from __future__ import annotations

import pytest
import torch

from nas.controllers import CONTROLLERS
from nas.export.codegen import BuildSettings, Facts, generate
from nas.genotype import COMBINES, CONV_DOWNSAMPLES, DOWNSAMPLES, POSTS, UPSAMPLES, Genotype, Node
from nas.inspect.draw import node_table
from nas.nets.builder import GenotypeNeck
from nas.proxy.detector import DETECTOR_BUILDERS
from nas.proxy.roi import ROI_POOLINGS
from nas.search.objectives import MULTI_OBJECTIVE_CONTROLLERS
from nas.settings import DETECTORS, ROI_MODES
from search_spaces import get_space

IN_CHANNELS = (8, 12, 16)
WORDS = [
    *(("combine", w) for w in COMBINES),
    *(("post", w) for w in POSTS),
    *(("up", w) for w in UPSAMPLES),
    *(("down", w) for w in DOWNSAMPLES),
]


def genotype_using(field: str, word: str) -> Genotype:
    """A small neck whose P4 node reads P3 and P5 (one resampled down, one up) with ``word`` as
    its ``field``; a conv downsampling spans one level, so P3 -> P4 does."""
    nodes = [Node(4, (0, 2), **{field: word}), Node(3, (0, 5)), Node(5, (2, 5)), Node(6, (3,)), Node(7, (4,))]
    extra = [Node(6, (2,)), Node(7, (3,))]
    return Genotype.create(nodes, [6, 5, 7, 8, 9], extra, name=f"{field}_{word}")


@pytest.mark.parametrize(("field", "word"), WORDS, ids=[f"{f}={w}" for f, w in WORDS])
def test_every_word_is_built_exported_drawn_and_spelt(field: str, word: str) -> None:
    genotype = genotype_using(field, word)
    neck = GenotypeNeck(genotype, IN_CHANNELS, 8, norm="bn")
    sides = (16, 8, 4)
    out = neck([torch.randn(1, c, s, s) for c, s in zip(IN_CHANNELS, sides)])
    assert out["P4"].shape == (1, 8, 8, 8)

    source = generate(genotype, BuildSettings(IN_CHANNELS, 8), Facts(params=0, flops=0, image_size=128))
    row = next(line for line in source.splitlines() if line.strip().startswith("5 ") and "P4" in line)
    shown = {"combine": word, "post": word if word != "none" else "-", "up": word, "down": word}[field]
    assert shown in row.split()

    table = node_table(genotype)
    assert table.count("\n") >= 3
    text = get_space("nasfpn").summary(genotype)
    if field == "down" and word != "max":  # max is the default, not shown
        assert f"/{DOWNSAMPLES[word].short}" in text
    if field == "combine":
        assert f"{COMBINES[word].short}(" in text
    if field == "post" and word not in ("none", "relu_conv"):  # the nasfpn space implies relu_conv
        assert f">{POSTS[word].short}" in text


def test_the_tables_say_what_each_word_is() -> None:
    for table in (COMBINES, POSTS, UPSAMPLES, DOWNSAMPLES):
        for name, word in table.items():
            assert word.meaning, name
            assert word.symbol or name == "none", name
            assert word.short or name == "none", name
    assert set(CONV_DOWNSAMPLES) <= set(DOWNSAMPLES)


def test_every_detector_and_roi_mode_has_its_one_builder() -> None:
    assert set(DETECTOR_BUILDERS) == set(DETECTORS)
    assert set(ROI_POOLINGS) == set(ROI_MODES)
    assert set(CONTROLLERS) == {"rl", "evolution", "random", "tpe"}
    assert set(MULTI_OBJECTIVE_CONTROLLERS) == {n for n, c in CONTROLLERS.items() if c.multi_objective}
