"""nasfpn compare: found cells and baselines trained with one recipe and the same seeds, on Ray."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pytest
import ray
import torch
from PIL import Image

from nas.cli import main
from nas.nets.backbone import backbone_widths
from nas.proxy.evaluate import METRICS
from nas.proxy.necks import resolve_neck
from nas.proxy.profile import profile_neck
from nas.search.compare import Entry, matched_repeats, welch_p, write_results
from nas.search.runs import COST_IMAGE_SIZE, RunFolder, SearchConfig
from nas.settings import ProxySettings
from search_spaces import get_space


def _run_with_one_trial(root: Path, dataset: Path, checkpoint: Path) -> RunFolder:
    """A run folder as a search leaves it: config, and a study with one completed trial."""
    settings = ProxySettings(budget="quick", width=32, backbone_checkpoint=str(checkpoint))
    images = str(dataset / "images")
    config = SearchConfig(
        name="c",
        proxy=asdict(settings),
        data={
            "train_json": str(dataset / "annotations" / "instances_train.json"),
            "val_json": str(dataset / "annotations" / "instances_val.json"),
            "train_images": images,
            "val_images": images,
        },
    )
    run = RunFolder(root / "c")
    run.save_config(config)
    study = run.open_study(config, ["maximize"], optuna.samplers.RandomSampler(seed=4))
    trial = study.ask()
    genotype = get_space("nasfpn").sample(trial)
    trial.set_user_attr("genotype", genotype.to_dict())
    trial.set_user_attr("AP", 0.5)
    study.tell(trial, 0.5)
    return run


def test_compare_writes_every_file_with_every_row_filled(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    run = _run_with_one_trial(tmp_path, tiny_dataset, backbone_checkpoint)
    args = ["compare", str(run.path), "--budget", "quick", "--seeds", "2", "--baselines", "fpn,bifpn"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    out = run.path / "compare"
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["neck"] for r in rows] == ["trial 0", "fpn", "bifpn"]
    assert [r["found"] for r in rows] == ["True", "False", "False"]
    assert [r["repeats"] for r in rows] == ["1", "1", "3"]  # BiFPN as its paper repeats it
    for row in rows:
        assert row["seeds"] == "2" and row["APs_mean"] == ""  # no box of the tiny data is small
        assert all(value != "" for key, value in row.items() if key != "APs_mean")
        assert 0.0 <= float(row["AP_mean"]) <= 1.0 and int(row["params"]) > 0
    markdown = (out / "compare.md").read_text()
    assert markdown.count("| trial 0 (found) |") == 1 and "| bifpn |" in markdown
    assert "trial 0 vs fpn" in markdown and "Welch" in markdown
    with Image.open(out / "compare.png") as image:
        assert image.size[0] > 100 and image.size[1] > 100
    assert "trial 0 vs bifpn" in capsys.readouterr().out

    # Finished trainings are reused: a second run trains nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/checkpoint.pt")}
    assert len(mtimes) == 6
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/checkpoint.pt")} == mtimes


def test_compare_of_an_unknown_baseline_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--baselines", "fpn,fpnn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fpnn" in err


def test_two_stage_compare_sets_roi_modes_side_by_side(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--baselines", "fpn,fpn@soft,augfpn", "--detector", "fasterrcnn", "--seeds", "1"]
    data = ["--data", str(tiny_dataset), "--backbone-checkpoint", str(backbone_checkpoint)]
    proxy = ["--budget", "quick", "--width", "16", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main([*args, *data, *proxy]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["neck"], r["roi"]) for r in rows] == [("fpn", "fpn"), ("fpn@soft", "soft"), ("augfpn", "soft")]
    assert all(0.0 <= float(r["AP_mean"]) <= 1.0 and int(r["params"]) > 0 for r in rows)
    markdown = (out / "compare.md").read_text()
    assert "| RoI |" in markdown and "| fpn@soft | soft |" in markdown and "| augfpn | soft |" in markdown
    assert "fpn@soft" in capsys.readouterr().out
    # Trainings are kept per RoI mode: an explicit --roi fpn would not reuse augfpn's soft ones.
    jobs = {p.parent.parent.name for p in out.glob("jobs/quick/*/seed0/metrics.json")}
    assert jobs == {"fpn@fpn", "fpn@soft", "augfpn@soft"}

    # Into the same folder with another width: refused before any work, the trainings kept.
    kept = {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/*") if p.is_file()}
    proxy[proxy.index("--width") + 1] = "8"
    assert main([*args, *data, *proxy]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings.width 16" in err and "asks for 8" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/**/*") if p.is_file()} == kept


def test_gpu_latency_gets_a_column_only_where_it_was_measured(tmp_path: Path) -> None:
    runs = [dict.fromkeys(METRICS, ap) for ap in (0.1, 0.2)]
    cpu_only = {"params": 1000, "flops": 2e9, "latency_ms": 3.0}
    for gpu_ms, expected in ((None, False), (0.25, True)):
        costs = cpu_only if gpu_ms is None else {**cpu_only, "gpu_latency_ms": gpu_ms}
        entry = Entry("fpn", resolve_neck("fpn"), found=False, runs=runs, costs=costs)
        out = tmp_path / str(expected)
        write_results([entry], [0, 1], ProxySettings(), out)
        markdown = (out / "compare.md").read_text()
        row = next(csv.DictReader((out / "compare.csv").open()))
        assert ("| GPU ms |" in markdown) is expected and ("gpu_latency_ms" in row) is expected
        if expected:
            assert "| 0.25 |" in markdown and float(row["gpu_latency_ms"]) == 0.25


@pytest.fixture
def sigint_handler():
    """Restores SIGINT's handler after a test that sets its own."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_a_comparison_mid_training_and_says_how_to_resume(
    sigint_handler, ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmp"
    job = out / "jobs" / "full" / "fpn" / "seed0"

    def press_ctrl_c_once_training() -> None:
        deadline = time.monotonic() + 120
        while not (job / "tb").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    # Where the suite runs as a background job SIGINT is ignored: give it its Ctrl-C meaning.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press_ctrl_c_once_training, daemon=True).start()
    # The full budget: 2,000 steps, so the training is far from done when Ctrl-C comes.
    args = ["compare", "--baselines", "fpn", "--seeds", "1", "--budget", "full", "--width", "16"]
    data = ["--data", str(tiny_dataset), "--backbone-checkpoint", str(backbone_checkpoint)]
    assert main([*args, *data, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Resume with the same command" in err and "Traceback" not in err
    assert (job / "tb").is_dir() and not (job / "metrics.json").exists()  # stopped mid-training
    # ... and the training stopped too: the session's cluster gets its CPU back.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_a_state_saved_by_another_training_is_not_counted_as_resumed(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmp"
    job = out / "jobs" / "quick" / "fpn" / "seed0"
    job.mkdir(parents=True)
    torch.save({"key": {"neck": "another"}, "step": 40}, job / "resume.pt")
    args = ["compare", "--baselines", "fpn", "--seeds", "1", "--budget", "quick", "--width", "16"]
    data = ["--data", str(tiny_dataset), "--backbone-checkpoint", str(backbone_checkpoint)]
    assert main([*args, *data, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 1 trainings to run" in printed and "saved state" not in printed
    assert (job / "metrics.json").is_file() and not (job / "resume.pt").exists()


def test_compare_repeats_a_baseline_as_asked_and_keeps_its_trainings_apart(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--baselines", "fpn,panet", "--repeats", "fpn=2", "--seeds", "1", "--out", str(out)]
    data = ["--data", str(tiny_dataset), "--backbone-checkpoint", str(backbone_checkpoint)]
    proxy = ["--budget", "quick", "--width", "16", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, *data, *proxy]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["neck"], r["repeats"]) for r in rows] == [("fpn x2", "2"), ("panet", "1")]
    assert {p.parent.parent.name for p in out.glob("jobs/quick/*/seed0/metrics.json")} == {"fpn-x2", "panet"}


def test_matched_repeats_bring_each_baseline_nearest_the_found_cells_flops() -> None:
    settings = ProxySettings(width=32)
    found = Entry("trial 0", replace(resolve_neck("nasfpn"), repeats=3), found=True)
    items = [found, *(Entry(name, resolve_neck(name), found=False) for name in ("fpn", "bifpn"))]
    matched = matched_repeats(items, settings)
    assert set(matched) == {"fpn", "bifpn"}

    def flops(entry: Entry, repeats: int) -> float:
        neck, widths = replace(entry.neck, repeats=repeats), backbone_widths(settings.backbone)
        return profile_neck(neck, widths, settings.width, COST_IMAGE_SIZE)["flops"]

    target = flops(found, 3)
    for entry in items[1:]:
        k = matched[entry.label]
        gap = abs(flops(entry, k) - target)
        assert all(gap <= abs(flops(entry, other) - target) for other in (k - 1, k + 1) if other >= 1)
    assert matched["fpn"] > 1  # NAS-FPN x3 costs more than one FPN


@pytest.mark.parametrize(
    "options, named",
    [
        (["--repeats", "fpn=0"], "fpn=0"),
        (["--repeats", "fpn"], "fpn"),
        (["--repeats", "panet=2"], "panet"),
        (["--repeats", "fpn=2", "--match-flops"], "--match-flops"),
    ],
)
def test_compare_refuses_impossible_repeats_in_one_line(options: list[str], named: str, capsys) -> None:
    try:  # argparse exits on what it parses; the command returns 2 on what it checks itself
        status = main(["compare", "--baselines", "fpn", *options])
    except SystemExit as stop:
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err


def test_a_size_class_no_run_has_is_a_dash(tmp_path: Path) -> None:
    runs = [{m: ap for m in METRICS if m != "APs"} for ap in (0.1, 0.2)]
    costs = {"params": 1000, "flops": 2e9, "latency_ms": 3.0}
    write_results([Entry("fpn", resolve_neck("fpn"), False, runs, costs)], [0, 1], ProxySettings(), tmp_path)
    header, _, row = (tmp_path / "compare.md").read_text().splitlines()[4:7]
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["APs"] == "-" and cells["APm"] == "15.0"
    row = next(csv.DictReader((tmp_path / "compare.csv").open()))
    assert row["APs_mean"] == "" and float(row["APm_mean"]) == 0.15


def test_welch_p_tests_one_side_and_says_1_where_nothing_can_be_tested() -> None:
    apart, close = [0.40, 0.41, 0.42], [0.30, 0.31, 0.32]
    assert welch_p(apart, close) < 0.01
    assert welch_p(close, apart) > 0.99  # one-sided: the reverse is no evidence
    assert welch_p([0.40], close) == 1.0  # a single seed: no test
    assert welch_p([0.4, 0.4], [0.3, 0.3]) == 0.0  # constant samples: their means decide
    assert welch_p([0.3, 0.3], [0.3, 0.3]) == 1.0
