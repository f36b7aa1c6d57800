"""``nasfpn export``: the generated neck.py computes what the builder's module computes, in a
fresh Python process that can import torch but not nasfpn; torch.export takes it; its usage
snippet runs in torchvision's RetinaNet; hostile genotypes never become code; the command
exports a run's trial with its weights and fails in one line on what a user gets wrong."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from helpers import randomize_norm_stats
from optuna.trial import TrialState

from fixed_necks import FIXED_NECKS
from nas.cli import main
from nas.export.bundle import NECK_PREFIX, ExportSource, export
from nas.export.codegen import BuildSettings, Facts, generate
from nas.export.safety import check_source
from nas.genotype import NUM_INPUTS, Genotype, GenotypeError, Node
from nas.nets.builder import GenotypeNeck
from nas.proxy.necks import NeckSpec
from nas.proxy.train import build_proxy_model
from nas.search.runs import RunFolder, SearchConfig
from nas.settings import ProxySettings
from search_spaces import get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
LEVELS = ["P3", "P4", "P5", "P6", "P7"]
IMAGE = 96  # C3..C5 at 12, 6, 3; P6, P7 at 2, 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from their initial values (fusion weights included) and non-trivial BN stats."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (0.5 if p.ndim == 1 else 0))
    randomize_norm_stats(module)


def features(in_channels, seed: int = 1, batch: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sides = [-(-IMAGE // s) for s in (8, 16, 32)]
    return [torch.randn(batch, c, s, s, generator=generator) for c, s in zip(in_channels, sides)]


def edge_genotype() -> Genotype:
    """Conv-made P6/P7 with a post op, attention (once between two P5 entries: the first gates),
    weighted fusion, subsampling over 3 levels, an identity read (P7) and an absorbed entry (6)."""
    return Genotype.create(
        [
            Node(5, (2,)),
            Node(4, (1, 5), combine="attention", post="relu_conv"),
            Node(3, (0, 5), combine="weighted", post="swish_sepconv"),
            Node(6, (3, 7), down="subsample"),
            Node(7, (4,)),
            Node(5, (5, 2), combine="attention"),
            Node(4, (8, 10), absorb_unconsumed=True, post="conv"),
        ],
        {"P3": 7, "P4": 11, "P5": 10, "P6": 8, "P7": 9},
        [Node(6, (2,), down="conv", post="conv"), Node(7, (3,), down="relu_conv")],
        name="edge",
    )


def aspp_genotype() -> Genotype:
    """A point of the fusion space: BiFPN with DetectoRS' ASPP as the post op of every third node."""
    bifpn = FIXED_NECKS["bifpn"].genotype
    nodes = [
        Node(n.level, n.inputs, n.combine, "aspp" if i % 3 == 0 else n.post)
        for i, n in enumerate(bifpn.nodes)
    ]
    return Genotype.create(nodes, bifpn.outputs, bifpn.extra_levels, name="bifpn_aspp")


def sampled(space_name: str, count: int, seed: int) -> list[Genotype]:
    space = get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    genotypes = []
    for _ in range(count):
        trial = study.ask()
        genotypes.append(space.sample(trial))
        study.tell(trial, 0.0)
    return genotypes


PROXY = (128, 256, 512)  # ResNet-10's C3..C5 widths


def cases() -> dict[str, tuple[Genotype, BuildSettings]]:
    fixed = {name: neck for name, neck in FIXED_NECKS.items()}
    nasfpn, fusion = sampled("nasfpn", 2, seed=5), sampled("fusion", 2, seed=7)
    return {
        "nasfpn": (fixed["nasfpn"].genotype, BuildSettings(PROXY, 32, 2, "bn")),
        "bifpn": (fixed["bifpn"].genotype, BuildSettings(PROXY, 32, 3, "bn")),
        "fpn": (fixed["fpn"].genotype, BuildSettings(PROXY, 32, 1, None)),
        "fpn_maxpool": (fixed["fpn_maxpool"].genotype, BuildSettings(PROXY, 32, 1, None)),
        "panet": (fixed["panet"].genotype, BuildSettings(PROXY, 32, 1, None)),
        "nasfpn_random0": (nasfpn[0], BuildSettings(PROXY, 32, 1, "bn")),
        "nasfpn_random1": (nasfpn[1], BuildSettings((24, 40, 56), 16, 2, "gn")),
        "fusion_random0": (fusion[0], BuildSettings(PROXY, 32, 2, "bn")),
        "fusion_random1": (fusion[1], BuildSettings((24, 40, 56), 16, 1, "none")),
        "edge_same_widths": (edge_genotype(), BuildSettings((16, 16, 16), 16, 2, "bn")),
        "edge": (edge_genotype(), BuildSettings((24, 40, 56), 16, 2, "gn")),
        "fusion_aspp": (aspp_genotype(), BuildSettings((24, 40, 56), 30, 2, "bn")),  # 30 = 7+7+8+8
        "fusion_aspp_no_norm": (aspp_genotype(), BuildSettings(PROXY, 16, 1, None)),
    }


@dataclass
class Exported:
    out: Path
    expected: dict[str, torch.Tensor]
    build: BuildSettings
    genotype: Genotype


# --- a tiny run folder, as a search leaves it -------------------------------------------------------


def make_run(root: Path, name: str, checkpoint_trial: bool = True, complete: bool = True) -> RunFolder:
    """config.json, an SQLite study (trial 0: AP 0.2, no checkpoint; trial 1: AP 0.5, checkpoint;
    trial 2 failed), trials/NNNN/genotype.json; only a failed trial with ``complete=False``."""
    settings = ProxySettings(width=16)
    options = {"cells": 5, "repeats": 2}  # repeats 2: the export must take it from the space
    config = SearchConfig(name=name, space="nasfpn", space_options=options, proxy=asdict(settings))
    run = RunFolder(root / name)
    run.save_config(config)
    space = get_space("nasfpn", **options)
    study = run.open_study(config, ["maximize"], sampler=optuna.samplers.RandomSampler(seed=11))
    outcomes = [(0.2, False), (0.5, True), (None, False)] if complete else [(None, False)]
    for ap, save_checkpoint in outcomes:
        trial = study.ask()
        genotype = space.sample(trial)
        trial.set_user_attr("genotype", genotype.to_dict())
        folder = run.trial_dir(trial.number)
        folder.mkdir(parents=True)
        genotype.save(folder / "genotype.json")
        if ap is None:
            trial.set_user_attr("failure", "RuntimeError: out of memory")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr("AP", ap)
        if save_checkpoint and checkpoint_trial:
            model = build_proxy_model(
                NeckSpec(genotype, space.repeats, space.norm), SimpleNamespace(num_classes=2), settings
            )
            randomize(model.neck, seed=trial.number)
            torch.save(model.state_dict(), folder / "checkpoint.pt")
        study.tell(trial, ap)
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    return make_run(tmp_path_factory.mktemp("runs"), "tiny")


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasfpn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- the fresh-process equality check, one child process for every export ----------------------------

CHILD = r"""
import importlib.util, json, sys

BLOCKED = {"nas", "fixed_necks", "search_spaces", "optuna", "torchvision", "ray"}


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} may not be imported by an exported neck")
        return None


sys.meta_path.insert(0, Block())
import torch

torch.set_num_threads(1)

for i, folder in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"exported_neck_{i}", f"{folder}/neck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    neck = module.Neck()
    neck.load_state_dict(torch.load(f"{folder}/weights.pt", weights_only=True))
    neck.eval()
    with torch.no_grad():
        out = neck(torch.load(f"{folder}/inputs.pt", weights_only=True))
    torch.save({"keys": list(out), "values": list(out.values())}, f"{folder}/outputs.pt")
print(json.dumps({"path": sys.path, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, run_folder: RunFolder) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("exports")
    result: dict[str, Exported] = {}
    for name, (genotype, build) in cases().items():
        reference = GenotypeNeck(genotype, build.in_channels, build.channels, build.repeats, build.norm)
        randomize(reference)
        out = root / name
        export(
            ExportSource(genotype, build, "file", name), out, image_size=IMAGE, state=reference.state_dict()
        )
        result[name] = Exported(out, {}, build, genotype)
    # The run's best trial, through the command line: its weights come from the proxy checkpoint.
    out = root / "run_best"
    assert (
        main(["export", str(run_folder.path), "--best", "--out", str(out), "--image-size", str(IMAGE)]) == 0
    )
    genotype = Genotype.from_json((out / "genotype.json").read_text())
    result["run_best"] = Exported(out, {}, BuildSettings(PROXY, 16, 2, "bn"), genotype)
    checkpoint = torch.load(run_folder.trial_dir(1) / "checkpoint.pt", weights_only=True)

    for name, case in result.items():
        build = case.build
        reference = GenotypeNeck(case.genotype, build.in_channels, build.channels, build.repeats, build.norm)
        if name == "run_best":
            state = {
                k.removeprefix(NECK_PREFIX): v for k, v in checkpoint.items() if k.startswith(NECK_PREFIX)
            }
        else:
            state = torch.load(case.out / "weights.pt", weights_only=True)
        reference.load_state_dict(state)
        inputs = features(build.in_channels)
        torch.save(inputs, case.out / "inputs.pt")
        with torch.no_grad():
            case.expected = dict(reference.eval()(inputs))

    child = root / "child.py"
    child.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    completed = subprocess.run(
        [sys.executable, "-I", str(child), *(str(c.out) for c in result.values())],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    repo = str(Path(__file__).resolve().parents[1])
    assert repo not in report["path"] and "" not in report["path"]
    for blocked in ("nas", "fixed_necks", "search_spaces", "optuna", "torchvision"):
        assert blocked not in report["modules"]
    return result


@pytest.mark.parametrize("name", [*cases(), "run_best"])
def test_exported_neck_equals_builder_in_a_fresh_process(exported: dict[str, Exported], name: str) -> None:
    case = exported[name]
    saved = torch.load(case.out / "outputs.pt", weights_only=True)
    assert saved["keys"] == LEVELS
    for level, value in zip(LEVELS, saved["values"]):
        assert torch.equal(value, case.expected[level]), f"{name} {level}"
    assert case.expected["P3"].abs().sum() > 0


def load_neck_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_dict_keys_match_the_builders(exported: dict[str, Exported]) -> None:
    for name, case in exported.items():
        build = case.build
        reference = GenotypeNeck(case.genotype, build.in_channels, build.channels, build.repeats, build.norm)
        neck = load_neck_module(case.out / "neck.py", f"keys_{name}").Neck()
        assert list(neck.state_dict()) == list(reference.state_dict()), name
        weights = torch.load(case.out / "weights.pt", weights_only=True)
        assert list(weights) == list(reference.state_dict()), name
        assert neck.out_channels == build.channels


@pytest.mark.parametrize("name", ["nasfpn", "bifpn", "edge"])
def test_torch_export_accepts_the_exported_module(exported: dict[str, Exported], name: str) -> None:
    case = exported[name]
    neck = load_neck_module(case.out / "neck.py", f"export_{name}").Neck()
    neck.load_state_dict(torch.load(case.out / "weights.pt", weights_only=True))
    neck.eval()
    inputs = features(case.build.in_channels, batch=2)
    program = torch.export.export(neck, (inputs,))
    with torch.no_grad():
        expected, actual = neck(inputs), program.module()(inputs)
    for level in LEVELS:
        torch.testing.assert_close(actual[level], expected[level])


def test_forward_is_one_statement_per_node(exported: dict[str, Exported]) -> None:
    for name in ("nasfpn", "bifpn", "edge", "edge_same_widths", "fusion_random0"):
        case = exported[name]
        source = (case.out / "neck.py").read_text()
        tree = ast.parse(source)
        used = sorted(i for i in case.genotype.used_entries() if i >= NUM_INPUTS)
        classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
        cell_names = [n for n in ("FirstCell", "Cell") if n in classes]
        # A first cell of its own exactly when the backbone's widths differ from the neck's.
        assert (cell_names == ["FirstCell", "Cell"]) == (
            case.build.repeats > 1 and set(case.build.in_channels) != {case.build.channels}
        ), name
        for cell in cell_names:
            forward = next(
                f for f in classes[cell].body if isinstance(f, ast.FunctionDef) and f.name == "forward"
            )
            assigned = [
                s.targets[0].id
                for s in forward.body
                if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)
            ]
            assert [a for a in assigned if re.fullmatch(r"x\d+", a)] == [f"x{i}" for i in used], (name, cell)
        imports = {n.names[0].name for n in ast.walk(tree) if isinstance(n, ast.Import)}
        imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imports <= {"torch", "torch.nn.functional", "collections", "__future__"}, imports
        docstring = ast.get_docstring(tree)
        assert "parameters" in docstring and "GFLOPs" in docstring and "RetinaNet" in docstring
    nasfpn = (exported["nasfpn"].out / "neck.py").read_text()
    assert "attention(" in nasfpn and "Fusion" not in nasfpn and "swish" not in nasfpn  # only what it uses
    assert "ASPP" not in nasfpn and "dilation" not in nasfpn
    aspp = (exported["fusion_aspp"].out / "neck.py").read_text()
    assert aspp.count("post=ASPP()") == 2 * 3 and "dilation: int = 1" in aspp  # FirstCell and Cell
    assert "    9      P5     7, 8 +2  attention  max   -        relu_conv  P5" in nasfpn  # the node table


def usage_snippet(source: str) -> str:
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Usage")) + 2
    end = next(i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("    "))
    return textwrap.dedent("\n".join(lines[start:end]))


def test_usage_snippet_runs_in_torchvision_retinanet(exported: dict[str, Exported]) -> None:
    folders = [exported["fpn"].out, exported["fusion_random1"].out]  # ResNet-18 body; stand-in body
    script = ["import os, sys, torch", "torch.set_num_threads(1)"]
    for folder in folders:
        snippet = usage_snippet((folder / "neck.py").read_text())
        assert "weights_only=True" in snippet and "RetinaNet(" in snippet
        script += [
            f"os.chdir({str(folder)!r}); sys.path.insert(0, {str(folder)!r}); sys.modules.pop('neck', None)",
            f"exec(compile({snippet!r}, 'snippet', 'exec'))",
            "assert len(detections) == 1 and set(detections[0]) == {'boxes', 'scores', 'labels'}",
            "weights = torch.load('weights.pt', weights_only=True)",
            "assert all(torch.equal(v, weights[k]) for k, v in neck.state_dict().items())",
            "assert model.backbone.neck is neck",
            "sys.path.pop(0)",
        ]
    completed = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resnet18()" in usage_snippet((folders[0] / "neck.py").read_text())
    assert "stand-in body" in usage_snippet((folders[1] / "neck.py").read_text())


# --- hostile genotypes -----------------------------------------------------------------------------

HOSTILE_NAMES = [
    '"""; import os; os.system("x") #',
    "x'''\nimport os\nos.system('x')\n'''",
    'a\\"""\\nimport os',
    "name\n\"\"\"\n__import__('os').system('x')",
    "{__import__('os')}",
]


def fpn_json(**changes) -> dict:
    data = FIXED_NECKS["fpn"].genotype.to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_never_becomes_code(tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(fpn_json(name=name)))
    code, out, err = run_cli(capsys, path, "--out", tmp_path / "out", "--image-size", IMAGE, "--channels", 16)
    assert code == 0, err
    source = (tmp_path / "out" / "neck.py").read_text()
    assert name not in source
    for fragment in ("os.system", "import os", "__import__", "'''"):
        assert fragment not in source
    assert "name is withheld" in source
    check_source(source)  # names, imports and string constants from the fixed lists only
    assert ast.get_docstring(ast.parse(source)).count('"""') == 0
    # The name is kept -- as data -- in genotype.json.
    assert json.loads((tmp_path / "out" / "genotype.json").read_text())["name"] == name


def test_a_plain_name_is_shown_and_a_hostile_file_name_is_not(tmp_path: Path, capsys) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(fpn_json(name="cell_v2-1.5")))
    assert run_cli(capsys, path, "--out", tmp_path / "a", "--image-size", IMAGE, "--channels", 16)[0] == 0
    assert "The genotype is cell_v2-1.5." in (tmp_path / "a" / "neck.py").read_text()
    evil = tmp_path / 'x"""import os.json'
    evil.write_text(json.dumps(fpn_json(name="")))
    code, _, err = run_cli(capsys, evil, "--out", tmp_path / "b", "--image-size", IMAGE, "--channels", 16)
    assert code == 0, err
    source = (tmp_path / "b" / "neck.py").read_text()
    assert "import os" not in source and "name withheld" in source


def _node0(**changes) -> dict:
    data = fpn_json()
    data["nodes"][0].update(changes)
    return data


HOSTILE_FIELDS = [
    (_node0(combine='sum"); import os; ("'), "unknown combine op"),
    (_node0(post="relu_conv\nimport os"), "unknown post op"),
    (_node0(down="__import__('os')"), "unknown down op"),
    (_node0(inputs=[10**30]), "not yet in the pool"),
    (_node0(inputs=[-1]), "not yet in the pool"),
    (_node0(level=10**18), "outside the pyramid"),
    (_node0(level=True), "'level' must be an integer"),
    (_node0(inputs=[True]), "'inputs' must be a list of integers"),
    (_node0(inputs=[[0]]), "'inputs' must be a list of integers"),
    (_node0(inputs={"0": 0}), "'inputs' must be a list of integers"),
    (_node0(inputs=[0.0]), "'inputs' must be a list of integers"),
    (_node0(absorb_unconsumed=1), "true or false"),
    (_node0(__class__="os"), "unknown key"),
    (fpn_json(outputs={"P3": "9", "P4": 11, "P5": 12, "P6": 13, "P7": 14}), "pool index"),
    (fpn_json(outputs={"P3": 10**40, "P4": 11, "P5": 12, "P6": 13, "P7": 14}), "not a node"),
    (fpn_json(name={"__import__": "os"}), "'name' must be a string"),
    (fpn_json(format_version="1"), "format_version"),
    (fpn_json(nodes="import os"), "'nodes' must be a list"),
    (fpn_json(nodes=[["import os"]]), "a node is a JSON object"),
]


@pytest.mark.parametrize(("data", "fragment"), HOSTILE_FIELDS)
def test_hostile_fields_are_rejected_before_any_code(
    tmp_path: Path, capsys, data: dict, fragment: str
) -> None:
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, path, "--out", out)
    assert_one_line_error(code, err, "evil.json", fragment)
    assert not out.exists()


def test_generate_validates_again_and_checks_its_integers() -> None:
    fpn = FIXED_NECKS["fpn"].genotype
    # Put together in Python, past the file parser's type checks: False reads as entry 0.
    sneaky = Genotype.create([Node(3, (False,)), *fpn.nodes[1:]], fpn.outputs)
    build, facts = BuildSettings(PROXY, 16), Facts(params=1, flops=1, image_size=IMAGE)
    with pytest.raises(GenotypeError, match="'inputs' must be a list of integers"):
        generate(sneaky, build, facts)
    for bad in (
        dict(channels=True),
        dict(channels="16"),
        dict(channels=16.0),
        dict(in_channels=(128, 256, 2**40)),
        dict(repeats=10**6),
        dict(norm="bn; import os"),
    ):
        with pytest.raises(ValueError):
            BuildSettings(**{"in_channels": PROXY, "channels": 16, **bad})
    with pytest.raises(ValueError):
        generate(fpn, build, Facts(params="1; import os", flops=1, image_size=IMAGE))


def test_check_source_refuses_code_outside_its_lists() -> None:
    source = generate(FIXED_NECKS["bifpn"].genotype, BuildSettings(PROXY, 16, 2), Facts(1, 1, IMAGE))
    check_source(source)
    for injected in (
        "import os\n",
        "from os import system\n",
        "x = eval('1')\n",
        "x = getattr(torch, 'load')\n",
        "x = __import__\n",
        "x = open\n",
        "x = b'bytes'\n",
    ):
        with pytest.raises(ValueError):
            check_source(source + injected)


# --- the command on a run folder -----------------------------------------------------------------------


def test_export_a_runs_trials(tmp_path: Path, capsys, run_folder: RunFolder, exported) -> None:
    best = exported["run_best"].out
    assert sorted(p.name for p in best.iterdir() if p.suffix in (".py", ".json", ".pt")) == [
        "genotype.json",
        "inputs.pt",
        "neck.py",
        "outputs.pt",
        "weights.pt",
    ]
    study_genotype = run_folder.load_study().trials[1].user_attrs["genotype"]
    assert json.loads((best / "genotype.json").read_text()) == study_genotype  # trial 1 has the best AP
    source = (best / "neck.py").read_text()
    assert "trial 1 of the search run tiny (proxy AP 50.0)" in source and "REPEATS = 2" in source

    code, out, err = run_cli(
        capsys, run_folder.path, "--trial", 0, "--out", tmp_path / "t0", "--image-size", IMAGE
    )
    assert code == 0, err
    assert "trial 0 of run tiny" in out and "no weights" in out
    assert sorted(p.name for p in (tmp_path / "t0").iterdir()) == ["genotype.json", "neck.py"]
    code, out, err = run_cli(
        capsys, run_folder.path, "--trial", 2, "--out", tmp_path / "t2", "--image-size", IMAGE
    )
    assert code == 0 and "trial 2 failed" in out  # a failed trial's cell can still be exported


def test_export_errors_are_one_line(tmp_path: Path, capsys, run_folder: RunFolder) -> None:
    run = run_folder.path
    code, _, err = run_cli(capsys, run, "--trial", 99, "--out", tmp_path / "a")
    assert_one_line_error(code, err, "no trial 99", "trials 0..2")
    empty = make_run(tmp_path, "empty", complete=False)
    code, _, err = run_cli(capsys, empty.path, "--best", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "no completed trial")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, run, "--out", blocker / "sub")
    assert_one_line_error(code, err, "cannot write there")
    code, _, err = run_cli(capsys, run, "--out", blocker)
    assert_one_line_error(code, err, "not a folder")
    code, _, err = run_cli(capsys, run, "--channels", 64, "--out", tmp_path / "c")
    assert_one_line_error(code, err, "--channels", "config.json")
    code, _, err = run_cli(capsys, "fpn", "--best", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "--best applies to a run folder")
    code, _, err = run_cli(capsys, tmp_path, "--out", tmp_path / "e")
    assert_one_line_error(code, err, "not a search run folder")
    code, _, err = run_cli(capsys, "no_such_neck", "--out", tmp_path / "f")
    assert_one_line_error(code, err, "unknown neck")
    assert not any((tmp_path / x).exists() for x in "abcdef")

    # A config whose proxy width is code, not a number; a checkpoint of another neck.
    config = json.loads(run_folder.config_file.read_text())
    bad = RunFolder(tmp_path / "bad")
    bad.path.mkdir()
    bad.config_file.write_text(
        json.dumps({**config, "proxy": {**config["proxy"], "width": "16); import os"}})
    )
    code, _, err = run_cli(capsys, bad.path, "--trial", 0, "--out", tmp_path / "g")
    assert_one_line_error(code, err, "config.json", "bad build settings")
    mixed = make_run(tmp_path, "mixed")
    (mixed.trial_dir(1) / "checkpoint.pt").write_bytes(
        (run_folder.trial_dir(1) / "checkpoint.pt").read_bytes()
    )
    (mixed.trial_dir(1) / "genotype.json").write_text(json.dumps(FIXED_NECKS["fpn"].genotype.to_dict()))
    code, _, err = run_cli(capsys, mixed.path, "--trial", 1, "--out", tmp_path / "h")
    assert_one_line_error(code, err, "different genotypes")
    (mixed.trial_dir(1) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (mixed.trial_dir(1) / "genotype.json").unlink()
    code, _, err = run_cli(capsys, mixed.path, "--trial", 1, "--out", tmp_path / "h")
    assert_one_line_error(code, err, "checkpoint.pt: not a torch checkpoint")
    torch.save(
        {NECK_PREFIX + "cells.0.nodes.5.post.1.weight": torch.zeros(1)}, mixed.trial_dir(1) / "checkpoint.pt"
    )
    code, _, err = run_cli(capsys, mixed.path, "--trial", 1, "--out", tmp_path / "h")
    assert_one_line_error(code, err, "checkpoint.pt: do not fit the neck")
    assert not (tmp_path / "h").exists()


def test_export_a_fixed_neck_or_file_with_build_options(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bifpn.json"
    FIXED_NECKS["bifpn"].genotype.save(path)
    args = (
        "--in-channels",
        "24,40,56",
        "--channels",
        16,
        "--repeats",
        2,
        "--norm",
        "gn",
        "--image-size",
        IMAGE,
    )
    code, out, err = run_cli(capsys, path, "--out", tmp_path / "a", *args)
    assert code == 0, err
    source = (tmp_path / "a" / "neck.py").read_text()
    assert "REPEATS = 2" in source and "GroupNorm" in source and "IN_CHANNELS = (24, 40, 56)" in source
    assert "genotype file bifpn" in out and "bit for bit" in out
    reference = GenotypeNeck(FIXED_NECKS["bifpn"].genotype, (24, 40, 56), 16, 2, "gn")
    assert f"{sum(p.numel() for p in reference.parameters()):,} parameters" in source

    code, out, err = run_cli(
        capsys, "nasfpn", "--out", tmp_path / "a", "--channels", 16, "--image-size", IMAGE
    )
    assert_one_line_error(code, err, "already holds neck.py, genotype.json", "--force")
    (tmp_path / "a" / "weights.pt").write_bytes(b"stale")
    code, out, err = run_cli(
        capsys, "nasfpn", "--out", tmp_path / "a", "--channels", 16, "--force", "--image-size", IMAGE
    )
    assert code == 0, err
    assert "REPEATS = 7" in (tmp_path / "a" / "neck.py").read_text()  # the registry's repeats
    assert not (tmp_path / "a" / "weights.pt").exists() and "removed" in out
