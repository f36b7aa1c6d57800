"""The command line as a user runs it: a real subprocess, real exit status and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.settings import BUDGETS, budget_of

ROOT = Path(__file__).resolve().parents[1]


def nasfpn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nasfpn: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_necks_list_shows_every_neck() -> None:
    result = nasfpn("necks", "list", "--image-size", "128", "--in-channels", "64,128,256", "--channels", "32")
    assert result.returncode == 0, result.stderr
    for name in ("fpn", "fpn_maxpool", "panet", "bifpn", "nasfpn"):
        assert any(line.split()[:1] == [name] for line in result.stdout.splitlines()), name
    assert "128x128" in result.stdout and "GFLOPs" in result.stdout


def test_necks_show_prints_table_and_draws(tmp_path: Path) -> None:
    png = tmp_path / "nasfpn.png"
    result = nasfpn("necks", "show", "nasfpn", "--png", str(png), "--image-size", "128")
    assert result.returncode == 0, result.stderr
    assert "7 nodes" in result.stdout
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_necks_show_reads_a_genotype_file(tmp_path: Path) -> None:
    from fixed_necks import FIXED_NECKS

    path = tmp_path / "mine.json"
    FIXED_NECKS["bifpn"].genotype.save(path)
    result = nasfpn("necks", "show", str(path), "--image-size", "128")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bifpn: 8 nodes, repeats 1")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('{"format_version": 1, "nodes": [', ["bad.json", "not valid JSON"]),
        (
            json.dumps({"format_version": 1, "nodes": [{"level": 9, "inputs": [0]}], "outputs": {}}),
            ["bad.json", "node 5", "level 9 is outside the pyramid"],
        ),
    ],
)
def test_bad_genotype_file_is_one_line_exit_2(tmp_path: Path, content: str, fragments: list[str]) -> None:
    (tmp_path / "bad.json").write_text(content)
    _assert_one_line_error(nasfpn("necks", "show", "bad.json", cwd=tmp_path), *fragments)


def test_unknown_neck_and_bad_options_are_one_line_exit_2(tmp_path: Path) -> None:
    _assert_one_line_error(nasfpn("necks", "show", "fpnn"), "unknown neck 'fpnn'", "bifpn")
    _assert_one_line_error(nasfpn("necks", "show", str(tmp_path / "nope.json")), "nope.json", "cannot read")
    _assert_one_line_error(nasfpn("necks", "list", "--in-channels", "1,2"), "--in-channels")
    _assert_one_line_error(nasfpn("necks", "list", "--image-size", "-3"), "--image-size")
    _assert_one_line_error(
        nasfpn("necks", "show", "fpn", "--png", str(tmp_path / "no" / "x.png")), "does not exist"
    )
    _assert_one_line_error(nasfpn("frobnicate"), "invalid choice")
    _assert_one_line_error(
        nasfpn("data", "synth", "--out", str(tmp_path / "s"), "--size", "10"), "at least 32"
    )
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    _assert_one_line_error(nasfpn("data", "synth", "--out", str(tmp_path / "foreign")), "not overwriting")


def test_data_synth_then_train_quick(tmp_path: Path) -> None:
    import torch

    from nas.nets.backbone import resnet_body

    made = nasfpn(
        "data", "synth", "--out", str(tmp_path / "d"), "--train", "8", "--val", "4", "--size", "128"
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "d" / "annotations" / "instances_val.json").exists()
    torch.save(resnet_body("resnet10").state_dict(), tmp_path / "r10.pt")
    result = nasfpn(
        "train",
        "--neck",
        "nasfpn",
        "--data",
        str(tmp_path / "d"),
        "--budget",
        "quick",
        "--width",
        "16",
        "--backbone-checkpoint",
        str(tmp_path / "r10.pt"),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    assert "AP " in result.stdout and "APl" in result.stdout
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= saved["metrics"]["AP"] <= 1.0


def test_train_bad_inputs_are_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"format_version": 1}')
    _assert_one_line_error(nasfpn("train", "--neck", str(tmp_path / "g.json")), "g.json", "missing 'nodes'")
    _assert_one_line_error(
        nasfpn("train", "--neck", "fpn", "--data", str(tmp_path / "none")), "no such folder"
    )
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "instances_train.json").write_text('{"images": [')
    (broken / "annotations" / "instances_val.json").write_text("{}")
    _assert_one_line_error(nasfpn("train", "--neck", "fpn", "--data", str(broken)), "instances_train.json")
    _assert_one_line_error(
        nasfpn("train", "--neck", "fpn", "--train-json", "a.json"),
        "--train-json, --val-json and --images together",
    )
    _assert_one_line_error(nasfpn("train", "--neck", "fpn", "--budget", "0"), "budget '0'", "number of steps")
    _assert_one_line_error(
        nasfpn(
            "train",
            "--neck",
            "fpn",
            "--backbone-checkpoint",
            str(tmp_path / "nope.pt"),
            "--data",
            str(broken),
        ),
        "instances_train.json",
    )
    _assert_one_line_error(nasfpn("train", "--neck", "fpn", "--detector", "yolo"), "invalid choice")


def test_a_budget_is_a_name_or_its_steps() -> None:
    assert budget_of("default") == BUDGETS["default"] and budget_of("long").steps == 8000
    # Evaluations every ~250 steps, 1 to 4: as the named budgets have them.
    assert [(budget_of(n).steps, budget_of(n).evaluations) for n in ("30", "500", "1200", "9000")] == [
        (30, 1),
        (500, 2),
        (1200, 4),
        (9000, 4),
    ]
    for bad in ("0", "-5", "1e3", "soon"):
        with pytest.raises(ValueError, match="neither a number of steps"):
            budget_of(bad)
