"""nas.inspect.draw: the node table and the PNG drawing of a genotype."""

from __future__ import annotations

import pytest
from PIL import Image

from fixed_necks import FIXED_NECKS
from nas.genotype import LEVELS, Genotype, Node
from nas.inspect.draw import draw_genotype, node_table

# The necks with a genotype twin (AugFPN and RFP have none).
TWINS = [name for name, neck in FIXED_NECKS.items() if neck.make_genotype is not None]

HEADER = ["entry", "role", "level", "inputs", "combine", "down", "up", "post", "output"]


def table_rows(genotype: Genotype) -> dict[int, dict[str, str]]:
    """The table parsed back: entry index -> {column: cell}, reading cells by header position."""
    header, *lines = node_table(genotype).splitlines()
    assert header.split() == HEADER
    starts = [header.index(name) for name in HEADER]
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows[int(cells[0])] = dict(zip(HEADER, cells))
    return rows


def with_unused_node() -> Genotype:
    """FPN-like laterals and P6/P7, plus nodes 8 and 11 that no output reads."""
    nodes = [
        Node(3, (0,), post="conv"),
        Node(4, (1,), post="conv"),
        Node(5, (2,), post="conv"),
        Node(4, (5, 6), combine="attention"),  # 8: unused
        Node(6, (7,), down="conv"),
        Node(7, (9,), down="relu_conv"),
        Node(5, (8, 10)),  # 11: unused
    ]
    return Genotype.create(nodes, outputs=[5, 6, 7, 9, 10], name="with unused nodes")


@pytest.mark.parametrize("name", TWINS)
def test_table_has_a_row_per_entry_and_marks_the_outputs(name: str) -> None:
    genotype = FIXED_NECKS[name].genotype
    rows = table_rows(genotype)
    assert sorted(rows) == list(range(genotype.num_entries))
    outputs = {index: f"P{level}" for level, index in zip(LEVELS, genotype.outputs)}
    for index, row in rows.items():
        assert row["output"] == outputs.get(index, "-"), row  # every fixed neck uses all its nodes
        assert row["level"] == f"P{genotype.entry_levels[index]}"
    extra = ["P6", "P7"] if genotype.extra_levels else ["absent", "absent"]
    roles = ["C3", "C4", "C5", *extra] + ["node"] * len(genotype.nodes)
    assert [rows[i]["role"] for i in sorted(rows)] == roles


def test_nasfpn_table() -> None:
    rows = table_rows(FIXED_NECKS["nasfpn"].genotype)
    assert rows[9] == {
        "entry": "9",
        "role": "node",
        "level": "P5",
        "inputs": "7, 8 +2",  # C5 is absorbed
        "combine": "attention",
        "down": "max",
        "up": "-",
        "post": "relu_conv",
        "output": "P5",
    }
    assert rows[10]["inputs"] == "6, 9 +4" and rows[10]["output"] == "P7"
    assert rows[11]["output"] == "P6" and (rows[11]["down"], rows[11]["up"]) == ("max", "nearest")
    assert [rows[i]["role"] for i in range(5)] == ["C3", "C4", "C5", "P6", "P7"]
    assert rows[3]["inputs"] == "2" and rows[3]["down"] == "max"
    assert rows[6]["down"] == rows[6]["up"] == "-"  # reads P4 entries only: no resampling


def test_fpn_table() -> None:
    rows = table_rows(FIXED_NECKS["fpn"].genotype)
    assert rows[3]["role"] == rows[4]["role"] == "absent"
    assert rows[5]["combine"] == "-"  # a lateral reads one entry: nothing to combine
    assert rows[13]["down"] == "conv" and rows[14]["down"] == "relu_conv"


def test_table_marks_unused_nodes() -> None:
    rows = table_rows(with_unused_node())
    assert [i for i, row in rows.items() if row["output"] == "unused"] == [8, 11]


def test_table_columns_are_aligned() -> None:
    header, *lines = node_table(FIXED_NECKS["panet"].genotype).splitlines()
    start = header.index("output")
    assert all(line[start - 2 : start] == "  " for line in lines)


@pytest.mark.parametrize("name", TWINS)
def test_draw_fixed_necks(name: str, tmp_path) -> None:
    path = tmp_path / f"{name}.png"
    draw_genotype(FIXED_NECKS[name].genotype, path)
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 800 <= width <= 4000 and 400 <= height <= 1200


def test_draw_unused_node_and_title(tmp_path) -> None:
    path = tmp_path / "unused.png"
    draw_genotype(with_unused_node(), str(path), title="a custom title")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 300


def test_draw_scales_width_with_node_count(tmp_path) -> None:
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    draw_genotype(FIXED_NECKS["nasfpn"].genotype, small)  # 7 nodes
    draw_genotype(FIXED_NECKS["panet"].genotype, large)  # 14 nodes
    with Image.open(small) as a, Image.open(large) as b:
        assert b.size[0] > 1.5 * a.size[0]
