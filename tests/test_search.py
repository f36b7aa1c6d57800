"""Searches end to end: a real local Ray cluster (one per session), Ray Tune, a SQLite Optuna study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pytest
import torch
from helpers import search_args
from optuna.trial import TrialState

from fixed_necks import get_fixed_neck
from nas.cli import main
from nas.genotype import Genotype
from nas.search.driver import run_search
from nas.search.runs import RunFolder, SearchConfig, count_done
from nas.settings import ProxySettings


@pytest.fixture
def spawn():
    """Starts subprocesses; kills any still running when the test ends, passed or not."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _search_args(name: str, runs: Path, dataset: Path, checkpoint: Path, *extra: str) -> list[str]:
    return search_args(name, runs, dataset, checkpoint, "--budget", "quick", *extra)


def _trials(run: RunFolder) -> list[optuna.trial.FrozenTrial]:
    return run.load_study().get_trials(deepcopy=False)


def _trials_while_running(run: RunFolder) -> list[optuna.trial.FrozenTrial]:
    """The trials of a search another process is running ([] until its study exists)."""
    try:
        return _trials(run)
    except (KeyError, ValueError, OSError):
        return []


@pytest.mark.parametrize("controller", ["rl", "evolution", "random", "tpe"])
def test_each_controller_runs_a_four_trial_search(
    controller: str,
    ray_cluster: str,
    tiny_dataset: Path,
    backbone_checkpoint: Path,
    tmp_path: Path,
    capsys,
    monkeypatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --runs-dir: trials write into it from Ray's own folders
    args = _search_args("s", Path("runs"), tiny_dataset, backbone_checkpoint, "--controller", controller)
    assert main([*args, "--trials", "4", "--workers", "2"]) == 0
    run = RunFolder(tmp_path / "runs" / "s")
    trials = _trials(run)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert 0.0 <= t.value <= 1.0 and t.value == t.user_attrs["AP"]
        assert t.user_attrs["params"] > 0 and t.user_attrs["flops"] > 0 and t.user_attrs["latency_ms"] > 0
        genotype = Genotype.from_dict(t.user_attrs["genotype"])
        assert (run.trial_dir(t.number) / "genotype.json").read_text().strip() == genotype.to_json()
        assert (run.trial_dir(t.number) / "checkpoint.pt").is_file()
    assert run.baseline_metrics() is not None
    assert run.controller_state.is_file() == (controller == "rl")
    printed = capsys.readouterr().out
    assert "baseline FPN: AP" in printed and "4/4 done" in printed
    assert "FPN" in printed.split("trials done")[-1]  # the leaderboard's reference row


@pytest.mark.cuda  # runs everywhere; on a GPU machine its trainings use CUDA
def test_gpu_shares_put_two_trainings_on_one_gpu_at_once(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """The session's cluster declares one GPU and two CPUs; at 0.5 GPU and 0.5 CPU a training and
    3 workers, the GPU allows 2 at a time (the CPUs would allow 4)."""
    args = _search_args("g", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "random")
    shares = [
        "--gpus-per-trial",
        "0.5",
        "--cpus-per-trial",
        "0.5",
        "--workers",
        "3",
        "--address",
        ray_cluster,
    ]
    assert main([*args, *shares, "--trials", "3", "--scheduler", "none"]) == 0
    spans = []  # every training's (start, end), the FPN baseline's too, from Tune's own records
    for path in (tmp_path / "g" / "tune").glob("*/result.json"):
        results = [json.loads(line) for line in path.read_text().splitlines()]
        spans.append((results[0]["started"], results[-1]["timestamp"]))
        assert {r["gpus"] for r in results} == {"0"}  # a share of the one GPU
    assert len(spans) == 4
    most_at_once = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert most_at_once == 2
    cuda = torch.cuda.is_available()
    trials = _trials(RunFolder(tmp_path / "g"))
    assert {t.user_attrs["device"] for t in trials} == {"cuda" if cuda else "cpu"}
    assert capsys.readouterr().out.count("torch sees no CUDA") == (0 if cuda else 1)


def test_resume_after_sigkill_loses_and_repeats_nothing(
    spawn, ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    args = _search_args("k", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "evolution")
    args += ["--trials", "5", "--workers", "1"]
    log = (tmp_path / "first.log").open("w")
    search = spawn(
        [sys.executable, "-m", "nas", *args, "--address", ray_cluster], stdout=log, stderr=subprocess.STDOUT
    )
    run = RunFolder(tmp_path / "k")
    deadline = time.monotonic() + 240
    # Kill it once two trials are complete and another one is training: its genotype is recorded,
    # so all its decisions are made (a trial killed while still sampling has only some of them).
    while True:
        assert search.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the search did not get going"
        trials = _trials_while_running(run)
        states = [t.state for t in trials]
        training = [t for t in trials if t.state == TrialState.RUNNING and "genotype" in t.user_attrs]
        if states.count(TrialState.COMPLETE) >= 2 and training:
            break
        time.sleep(0.3)
    search.send_signal(signal.SIGKILL)
    search.wait()
    before = {t.number: (t.value, t.params) for t in _trials(run) if t.state == TrialState.COMPLETE}
    killed = [t for t in _trials(run) if t.state == TrialState.RUNNING]
    assert killed

    assert main(args) == 0
    after = _trials(run)
    complete = {t.number: (t.value, t.params) for t in after if t.state == TrialState.COMPLETE}
    assert all(complete[n] == before[n] for n in before)  # kept, not rerun
    assert count_done(run.load_study()) == 5 and len(complete) == 5
    for old in killed:
        assert after[old.number].state == TrialState.FAIL
        (rerun,) = [t for t in after if t.user_attrs.get("rerun_of") == old.number]
        assert rerun.params == old.params and rerun.state == TrialState.COMPLETE
    assert main(args) == 0  # a finished search stays finished
    assert len(_trials(run)) == len(after)


def test_a_raising_trial_is_recorded_as_failed_and_the_search_ends(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    data = tiny_dataset / "annotations"
    settings = ProxySettings(budget="quick", width=32, backbone_checkpoint=str(backbone_checkpoint))
    config = SearchConfig(
        name="f",
        controller="random",
        trials=3,
        objective={},
        proxy=asdict(replace(settings, lr=1e12)),  # the loss blows up: every trial raises
        data={
            "train_json": str(data / "instances_train.json"),
            "val_json": str(data / "instances_val.json"),
            "train_images": str(tiny_dataset / "images"),
            "val_images": str(tiny_dataset / "images"),
        },
        workers=2,
    )
    lines: list[str] = []
    outcome = run_search(config, RunFolder(tmp_path / "f"), cache_dir=tmp_path, out=lines.append)
    trials = RunFolder(tmp_path / "f").load_study().trials
    assert outcome.finished and outcome.failed == 3
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all("TrainingError: loss became" in t.user_attrs["failure"] for t in trials)
    assert any("3 failed" in line for line in lines)


def test_resume_with_other_settings_is_refused(
    tmp_path: Path, tiny_dataset: Path, backbone_checkpoint: Path
) -> None:
    run = RunFolder(tmp_path / "r")
    run.save_config(SearchConfig(name="r", space="nasfpn", controller="rl"))
    result = subprocess.run(
        [sys.executable, "-m", "nas", *_search_args("r", tmp_path, tiny_dataset, backbone_checkpoint),
         "--controller", "tpe"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1 and "--controller" in result.stderr and "new --name" in result.stderr
    )


def test_a_malformed_space_option_is_a_one_line_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["search", "--name", "x", "--runs-dir", str(tmp_path), "--space-options", "cells"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cells': give NAME=VALUE" in err


def test_resume_with_other_space_options_is_refused(
    tmp_path: Path, tiny_dataset: Path, backbone_checkpoint: Path, capsys
) -> None:
    run = RunFolder(tmp_path / "o")
    run.save_config(SearchConfig(name="o", space="nasfpn", space_options={"cells": 7}))
    args = _search_args("o", tmp_path, tiny_dataset, backbone_checkpoint, "--space-options", "cells=9")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--space-options" in err and "new --name" in err


def test_pareto_search_seeded_with_the_published_cell(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    args = _search_args("p", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "random")
    assert main([*args, "--objective", "ap,latency", "--seed-with", "nasfpn", "--trials", "2"]) == 0
    study = RunFolder(tmp_path / "p").load_study()
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    first, second = study.trials
    assert first.user_attrs["seeded"] == "nasfpn"
    assert Genotype.from_dict(first.user_attrs["genotype"]).nodes == get_fixed_neck("nasfpn").genotype.nodes
    for t in (first, second):
        assert t.values == [t.user_attrs["AP"], t.user_attrs["latency_ms"]]


def test_scalar_reward_is_mnasnet_style_against_fpn(
    ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    args = _search_args("m", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "evolution")
    assert main([*args, "--objective", "ap,flops", "--trials", "1"]) == 0
    run = RunFolder(tmp_path / "m")
    objective = run.load_config().objective
    assert objective["form"] == "scalar" and objective["target"] == run.baseline_metrics()["flops"]
    (trial,) = run.load_study().trials
    expected = trial.user_attrs["AP"] * (trial.user_attrs["flops"] / objective["target"]) ** -0.07
    assert trial.value == pytest.approx(expected)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--controller", "rl", "--objective", "ap,latency", "--reward", "pareto"], "learns from one reward"),
        (["--objective", "ap,size"], "give ap, ap,latency or ap,flops"),
        (["--seed-with", "fpn"], "--seed-with fpn: not a point of the nasfpn space"),
        (["--space", "fusion", "--space-options", "cells=6"], "search space 'fusion' has no option 'cells'"),
        (["--space-options", "cells=3"], "cells must be an integer >= 5"),
    ],
)
def test_impossible_search_options_are_one_line_errors(
    options: list[str], message: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    assert main([*_search_args("e", tmp_path, tiny_dataset, backbone_checkpoint), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_stops_cleanly_and_says_how_to_resume(
    stop: signal.Signals,
    spawn,
    ray_cluster: str,
    tiny_dataset: Path,
    backbone_checkpoint: Path,
    tmp_path: Path,
) -> None:
    args = _search_args("c", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "tpe")
    search = spawn(
        [sys.executable, "-m", "nas", *args, "--trials", "50", "--workers", "1", "--address", ray_cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = RunFolder(tmp_path / "c")
    deadline = time.monotonic() + 240
    while TrialState.COMPLETE not in [t.state for t in _trials_while_running(run)]:
        assert search.poll() is None and time.monotonic() < deadline, search.communicate()[0][-4000:]
        time.sleep(0.3)
    search.send_signal(stop)
    output, _ = search.communicate(timeout=120)
    assert search.returncode == 130, output
    assert "Resume with: nasfpn search --name c" in output and "Traceback" not in output
    assert not any(t.state == TrialState.RUNNING for t in _trials(run))


def test_sigterm_to_the_whole_process_group_stops_cleanly(
    spawn, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    """What ``timeout`` and batch schedulers send at a time limit: SIGTERM to every process of the
    search's group. The search starts its own Ray cluster (no --address), held outside it."""
    args = _search_args("t", tmp_path, tiny_dataset, backbone_checkpoint, "--controller", "random")
    search = spawn(
        [sys.executable, "-m", "nas", *args, "--trials", "50", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as under timeout; pytest stays out of it
    )
    run = RunFolder(tmp_path / "t")
    deadline = time.monotonic() + 300
    while TrialState.COMPLETE not in [t.state for t in _trials_while_running(run)]:
        assert search.poll() is None and time.monotonic() < deadline, search.communicate()[0][-4000:]
        time.sleep(0.3)
    os.killpg(search.pid, signal.SIGTERM)
    output, _ = search.communicate(timeout=120)
    assert search.returncode == 130, output
    assert "Resume with: nasfpn search --name t" in output
    assert "GCS" not in output and "Traceback" not in output
    assert not any(t.state == TrialState.RUNNING for t in _trials(run))
    holders = subprocess.run(["pgrep", "-f", "nas.search.local_ray"], capture_output=True, text=True)
    assert holders.stdout == ""  # the cluster's holder stopped with the search


def test_status_of_a_broken_run_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text("{broken")
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json: not a search config" in err
