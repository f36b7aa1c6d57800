"""The genotype IR: JSON round trips and every validation error, by its message."""

from __future__ import annotations

import json

import pytest

from fixed_necks import FIXED_NECKS
from nas.genotype import Genotype, GenotypeError, Node, load_genotype

# The necks with a genotype twin (AugFPN and RFP have none).
TWINS = [name for name, neck in FIXED_NECKS.items() if neck.make_genotype is not None]


@pytest.mark.parametrize("name", TWINS)
def test_json_round_trip(name: str, tmp_path) -> None:
    genotype = FIXED_NECKS[name].genotype
    assert Genotype.from_json(genotype.to_json()) == genotype
    path = tmp_path / "g.json"
    genotype.save(path)
    loaded = load_genotype(path)
    assert loaded == genotype
    assert loaded.absorbed == genotype.absorbed


def test_nasfpn_absorbs_unconsumed_same_level_entries() -> None:
    genotype = FIXED_NECKS["nasfpn"].genotype
    # The P5 output (node 9) takes in the untouched P5 (entry 2), the P7 output (node 10) P7 (entry 4).
    assert genotype.absorbed == ((), (), (), (), (2,), (4,), ())


def test_omitted_optional_fields_take_defaults() -> None:
    data = {
        "format_version": 1,
        "nodes": [
            {"level": 3, "inputs": [0]},
            {"level": 4, "inputs": [1]},
            {"level": 5, "inputs": [2]},
            {"level": 6, "inputs": [7]},
            {"level": 7, "inputs": [8]},
        ],
        "outputs": {"P3": 5, "P4": 6, "P5": 7, "P6": 8, "P7": 9},
    }
    genotype = Genotype.from_dict(data)
    assert genotype.nodes[0] == Node(level=3, inputs=(0,), combine="sum", post="none", down="max")
    assert genotype.extra_levels == ()


def _base() -> dict:
    return json.loads(FIXED_NECKS["nasfpn"].genotype.to_json())


def _edit(path: tuple, value) -> dict:
    data = _base()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()

CASES = [
    # (what is wrong, edit path, new value, expected message)
    (
        "input not yet in pool",
        ("nodes", 1, "inputs"),
        [1, 7],
        "node 6: input 7 is not yet in the pool (readable: 0..5)",
    ),
    ("negative input", ("nodes", 0, "inputs"), [-1, 3], "node 5: input -1 is not yet in the pool"),
    ("level outside pyramid", ("nodes", 2, "level"), 8, "node 7: level 8 is outside the pyramid P3..P7"),
    ("level below pyramid", ("nodes", 2, "level"), 2, "node 7: level 2 is outside the pyramid P3..P7"),
    ("unknown combine", ("nodes", 0, "combine"), "concat", "node 5: unknown combine op 'concat'"),
    ("unknown post", ("nodes", 3, "post"), "gelu", "node 8: unknown post op 'gelu'"),
    ("unknown down", ("nodes", 3, "down"), "avg", "node 8: unknown down op 'avg'"),
    ("unknown key", ("nodes", 4, "color"), "red", "node 9: unknown key 'color'"),
    ("unknown top key", ("cells",), [], "genotype: unknown key 'cells'"),
    ("level as string", ("nodes", 0, "level"), "4", "node 5: 'level' must be an integer, got a string"),
    ("level as bool", ("nodes", 0, "level"), True, "node 5: 'level' must be an integer, got a boolean"),
    ("inputs not a list", ("nodes", 0, "inputs"), "1,3", "node 5: 'inputs' must be a list of integers"),
    (
        "absorb as string",
        ("nodes", 0, "absorb_unconsumed"),
        "yes",
        "node 5: 'absorb_unconsumed' must be true or false",
    ),
    ("missing level", ("nodes", 0, "level"), _DELETE, "node 5: missing 'level'"),
    ("level left without output", ("outputs", "P6"), _DELETE, "outputs: level P6 is left without an output"),
    ("output at wrong level", ("outputs", "P6"), 10, "outputs: P6 is node 10, which is at level P7"),
    ("output not a node", ("outputs", "P3"), 0, "outputs: P3 is entry 0, which is not a node"),
    (
        "output index as string",
        ("outputs", "P3"),
        "7",
        "outputs: P3 must be a pool index (integer), got a string",
    ),
    ("duplicate input", ("nodes", 1, "inputs"), [5, 5], "node 6: input 5 is listed twice"),
    (
        "attention arity",
        ("nodes", 0, "inputs"),
        [0, 1, 3],
        "node 5: 'attention' combines exactly two inputs, got 3",
    ),
    ("bad format version", ("format_version",), 7, "format_version 7 is not supported"),
    ("missing format version", ("format_version",), _DELETE, "missing 'format_version'"),
    ("extra level wrong level", ("extra_levels", 0, "level"), 5, "extra level P6: level must be 6, got 5"),
    ("nodes not a list", ("nodes",), {}, "genotype: 'nodes' must be a list, got an object"),
]


@pytest.mark.parametrize(("what", "path", "value", "message"), CASES, ids=[c[0] for c in CASES])
def test_validation_error_names_node_and_reason(what, path, value, message) -> None:
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(_edit(path, value))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_p6_p7_absent_without_extra_levels() -> None:
    data = json.loads(FIXED_NECKS["fpn"].genotype.to_json())
    data["nodes"][3]["inputs"] = [6, 3]
    with pytest.raises(
        GenotypeError, match=r"node 8: input 3 is not yet in the pool .*extra_levels is empty"
    ):
        Genotype.from_dict(data)


def test_conv_downsampling_spans_one_level() -> None:
    with pytest.raises(
        GenotypeError, match="node 5: 'conv' downsampling spans one level, but input 0 is at P3"
    ):
        Genotype.create([Node(level=5, inputs=(0,), down="conv")], outputs=[5, 5, 5, 5, 5])


def test_file_errors_name_the_file(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"format_version": 1, "nodes": [')
    with pytest.raises(GenotypeError, match=r"broken\.json: not valid JSON: .* line 1"):
        load_genotype(broken)
    with pytest.raises(GenotypeError, match=r"missing\.json: cannot read"):
        load_genotype(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(("nodes", 2, "level"), 9)))
    with pytest.raises(GenotypeError, match=r"bad\.json: node 7: level 9 is outside the pyramid"):
        load_genotype(bad)


def test_direct_construction_validates() -> None:
    with pytest.raises(GenotypeError, match="node 5: level 9 is outside the pyramid"):
        Genotype((Node(level=9, inputs=(0,)),), (5, 5, 5, 5, 5))


def test_extra_levels_do_not_absorb() -> None:
    data = _edit(("extra_levels", 0, "absorb_unconsumed"), True)
    with pytest.raises(GenotypeError, match="extra level P6: 'absorb_unconsumed' applies to cell nodes only"):
        Genotype.from_dict(data)
