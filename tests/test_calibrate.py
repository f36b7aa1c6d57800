"""nasfpn calibrate: is the proxy to be trusted on this data, and at which budget?"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import search_args

from nas.cli import main
from nas.data.coco import CocoDetection
from nas.errors import UsageError
from nas.proxy.necks import resolve_neck
from nas.search.calibrate import (
    PANEL,
    Survey,
    assess,
    calibrated_budget,
    choose,
    survey,
    verdict,
    write_calibration,
)
from nas.search.compare import Entry
from nas.settings import ProxySettings

REFERENCE_AP = {"nofusion": 0.10, "fpn": 0.30, "panet": 0.32, "bifpn": 0.34, "nasfpn": 0.31}
RIGHT_ORDER = {"nofusion": [0.05, 0.06], "fpn": [0.20, 0.21], "panet": [0.22, 0.23], "bifpn": [0.26, 0.25]}
RIGHT_ORDER["nasfpn"] = [0.21, 0.22]
SURVEY = Survey(images=5000, classes=3, boxes=9000, image_size=128, small_side=12.0, proposed_size=128,
                too_few_to_pretrain=False)  # fmt: skip


def _panel(aps: dict[str, list[float]], seconds: float) -> list[Entry]:
    return [
        Entry(name, resolve_neck("fpn"), False, [{"AP": ap, "seconds": seconds} for ap in runs])
        for name, runs in aps.items()
    ]


def _reference(aps: dict[str, float] = REFERENCE_AP) -> list[Entry]:
    return _panel({name: [ap] for name, ap in aps.items()}, 100.0)


def test_the_cheapest_budget_that_ranks_as_the_reference_is_chosen(tmp_path: Path) -> None:
    upside_down = {name: [0.4 - ap, 0.41 - ap] for name, ap in REFERENCE_AP.items()}
    rows = [
        assess("100", _panel(upside_down, 5.0), _reference()),
        assess("300", _panel(RIGHT_ORDER, 15.0), _reference()),
        assess("600", _panel(RIGHT_ORDER, 30.0), _reference()),
    ]
    assert [r.trusted for r in rows] == [False, True, True]
    assert rows[0].tau == pytest.approx(-1.0) and rows[1].tau == pytest.approx(1.0)
    assert rows[1].separation == pytest.approx(15.0) and rows[1].p < 0.01
    assert rows[1].largest_std == pytest.approx(0.7071, abs=1e-3) and rows[1].seconds == 15.0
    assert choose(rows) is rows[1]
    text = verdict(rows, "long", 0.34, SURVEY, tmp_path)
    assert "budget '300'" in text and "tau_b 1.00" in text and f"--calibration {tmp_path}" in text


def test_with_no_budget_to_trust_the_verdict_says_what_to_change(tmp_path: Path) -> None:
    shuffled = {"nofusion": [0.22, 0.23], "fpn": [0.20, 0.24], "panet": [0.05, 0.06], "bifpn": [0.1, 0.1]}
    shuffled["nasfpn"] = [0.3, 0.3]
    rows = [
        assess("100", _panel(shuffled, 5.0), _reference()),
        assess("300", _panel({**shuffled, "bifpn": [0.35, 0.35]}, 9.0), _reference()),  # a little closer
    ]
    assert choose(rows) is None and not any(r.trusted for r in rows)
    small = replace(SURVEY, proposed_size=256, too_few_to_pretrain=True)
    text = verdict(rows, "long", 0.34, small, tmp_path)
    assert text.startswith("No candidate budget can be trusted")
    assert "--image-size 256" in text and "--backbone-checkpoint" in text and "longer than '300'" in text
    assert "learned little" not in text
    assert "learned little (best AP 0.4)" in verdict(rows, "long", 0.004, SURVEY, tmp_path)


def test_ties_go_to_fewer_steps_and_a_tau_of_exactly_the_threshold_is_trusted() -> None:
    same_cost = [assess(b, _panel(RIGHT_ORDER, 10.0), _reference()) for b in ("600", "300")]
    assert choose(same_cost).budget == "300"
    # FPN/NAS-FPN and PANet/BiFPN swapped, 2 of the 10 pairs: tau_b = (8 - 2) / 10 = 0.6.
    swapped_twice = {"nofusion": [0.05, 0.06], "fpn": [0.25, 0.26], "nasfpn": [0.20, 0.21]}
    swapped_twice |= {"panet": [0.30, 0.31], "bifpn": [0.27, 0.28]}
    threshold = assess("300", _panel(swapped_twice, 1.0), _reference())
    assert threshold.tau == pytest.approx(0.6) and threshold.trusted


def test_separation_is_tested_in_the_direction_the_reference_has_it() -> None:
    fpn_last = {**RIGHT_ORDER, "nofusion": [0.20, 0.21], "fpn": [0.05, 0.06]}
    row = assess("300", _panel(fpn_last, 1.0), _reference())
    assert row.tau == pytest.approx(0.8) and row.p > 0.5 and not row.trusted
    reference = _reference({**REFERENCE_AP, "nofusion": 0.305, "fpn": 0.10})
    row = assess("300", _panel(fpn_last, 1.0), reference)
    assert row.tau == pytest.approx(1.0) and row.p < 0.01 and row.separation == pytest.approx(-15.0)
    assert row.trusted


def test_the_survey_proposes_an_image_size_that_puts_a_tenth_of_the_boxes_on_p3(tiny_dataset: Path) -> None:
    train = CocoDetection.from_dir(tiny_dataset, "train")
    at_128 = survey(train, ProxySettings())
    assert (at_128.images, at_128.classes) == (16, train.num_categories) and at_128.boxes > 16
    assert at_128.small_side >= 8 and at_128.proposed_size == 128
    at_48 = survey(train, ProxySettings(image_size=48))
    assert at_48.small_side == pytest.approx(at_128.small_side * 48 / 128) and at_48.small_side < 8
    assert at_48.proposed_size % 32 == 0 and at_48.small_side * at_48.proposed_size / 48 >= 8
    assert at_48.proposed_size - 32 < 48 * 8 / at_48.small_side  # the smallest such multiple of 32
    assert at_48.too_few_to_pretrain and "--image-size" in " ".join(at_48.lines())
    assert not survey(train, ProxySettings(backbone_checkpoint="w.pt")).too_few_to_pretrain


def test_calibrated_budget_holds_the_search_to_the_calibrations_settings_and_data(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    train, val = (tiny_dataset / "annotations" / f"instances_{s}.json" for s in ("train", "val"))
    settings = ProxySettings(width=32)
    budgets = {"300": _panel(RIGHT_ORDER, 15.0)}
    write_calibration(budgets, "long", _reference(), SURVEY, settings, train, val, tmp_path)
    assert calibrated_budget(tmp_path, replace(settings, budget="calibrated"), train, val) == "300"
    with pytest.raises(UsageError, match="calibrated with width 32, the search asks for 64"):
        calibrated_budget(tmp_path, ProxySettings(), train, val)
    with pytest.raises(UsageError, match="other data"):
        calibrated_budget(tmp_path, settings, val, val)
    flat = {name: [0.2, 0.21] for name in REFERENCE_AP}  # no neck told from another
    write_calibration(
        {"300": _panel(flat, 1.0)}, "long", _reference(), SURVEY, settings, train, val, tmp_path
    )
    with pytest.raises(UsageError, match="trusts no budget: No candidate budget"):
        calibrated_budget(tmp_path, settings, train, val)
    with pytest.raises(UsageError, match="no such file"):
        calibrated_budget(tmp_path / "nothing", settings, train, val)


@pytest.mark.parametrize(
    "options, named",
    [
        (["--budgets", "quick,soon"], "'soon'"),
        (["--budgets", "full", "--reference", "default"], "--reference default (500 steps)"),
        (["--budgets", "300", "--reference", "300"], "must be longer"),
        (["--seeds", "1"], "--seeds"),
    ],
)
def test_impossible_options_are_one_line(options: list[str], named: str, capsys) -> None:
    try:
        status = main(["calibrate", *options])
    except SystemExit as stop:
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err


def test_a_tiny_calibration_end_to_end_and_its_resume(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cal"
    args = ["calibrate", "--budgets", "2", "--reference", "4", "--random-points", "1", "--out", str(out)]
    data = ["--data", str(tiny_dataset), "--backbone-checkpoint", str(backbone_checkpoint)]
    proxy = ["--width", "16", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, *data, *proxy]) == 0
    printed = capsys.readouterr().out
    assert "16 training images" in printed and "training images" in (out / "calibration.md").read_text()
    rows = list(csv.DictReader((out / "calibration.csv").open()))
    assert [r["budget"] for r in rows] == ["2"] and rows[0]["seeds"] == "2"
    assert set(rows[0]) == {
        "budget",
        "steps",
        "seeds",
        "largest_std",
        "separation",
        "p",
        "tau_b",
        "seconds",
        "trusted",
    }
    record = json.loads((out / "calibration.json").read_text())
    assert record["verdict"] in printed and record["reference"] == "4"
    assert (record["budget"] == "2") == (rows[0]["trusted"] == "True")
    necks = {p.parent.parent.name for p in out.glob("jobs/2/*/seed1/metrics.json")}
    assert necks >= set(PANEL) and len(necks) == len(PANEL) + 1
    assert {p.parent.parent.name for p in out.glob("jobs/4/*/seed0/metrics.json")} == necks
    assert (out / "calibration.png").stat().st_size > 0
    kept = {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/metrics.json")}
    assert main([*args, *data, *proxy]) == 0  # everything kept: nothing trains again
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/metrics.json")} == kept
    assert json.loads((out / "calibration.json").read_text())["rows"] == record["rows"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--budget", "calibrated"], "--budget calibrated needs --calibration DIR"),
        (["--calibration", "somewhere"], "--calibration is read with --budget calibrated only"),
        (["--budget", "calibrated", "--calibration", "nowhere"], "nowhere/calibration.json: no such file"),
    ],
)
def test_a_search_without_a_usable_calibration_is_a_one_line_error(
    options: list[str], message: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    assert main([*search_args("e", tmp_path, tiny_dataset, backbone_checkpoint), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "e").exists()


def test_a_search_at_the_calibrated_budget_records_it(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    train, val = (tiny_dataset / "annotations" / f"instances_{s}.json" for s in ("train", "val"))
    settings = ProxySettings(width=32, backbone_checkpoint=str(backbone_checkpoint))
    calibration = tmp_path / "cal"
    write_calibration(
        {"quick": _panel(RIGHT_ORDER, 1.0)}, "long", _reference(), SURVEY, settings, train, val, calibration
    )
    extra = [
        "--budget",
        "calibrated",
        "--calibration",
        str(calibration),
        "--trials",
        "1",
        "--controller",
        "random",
    ]
    assert main(search_args("s", tmp_path, tiny_dataset, backbone_checkpoint, *extra)) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["proxy"]["budget"] == "quick"
    assert config["calibration"] == {"folder": str(calibration.resolve()), "budget": "quick"}
