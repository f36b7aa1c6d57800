"""Several machines: a search and a comparison on a Ray cluster of two nodes (tests/ray_nodes.py:
separate raylets and object stores, one CPU each), joined with --address as a cluster user would.

Each node holds one training at a time, so with two at a time both nodes train -- shown by the
node id each trial records -- and the run folder on the driver must be complete all the same:
a trial's files travel through Ray (nas.search.artifacts), not through a shared disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import data_args
from optuna.trial import TrialState

from nas.search.runs import RunFolder, interrupted_numbers

HERE = Path(__file__).parent


class Nodes:
    """A two-node Ray cluster on this machine (tests/ray_nodes.py) and its commands."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            [sys.executable, str(HERE / "ray_nodes.py"), "2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address = self._answer()
        assert self.address, "the two-node cluster did not start"

    def command(self, word: str) -> None:
        """``kill``: SIGKILL the worker node; ``add``: a new worker node."""
        assert self.holder.stdin is not None
        self.holder.stdin.write(word + "\n")
        self.holder.stdin.flush()
        assert self._answer() == "done"

    def stop(self) -> None:
        assert self.holder.stdin is not None
        self.holder.stdin.close()
        self.holder.wait(timeout=120)

    def _answer(self) -> str:
        assert self.holder.stdout is not None
        return self.holder.stdout.readline().strip()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Nodes]:
    nodes = Nodes()
    yield nodes
    nodes.stop()


def _nasfpn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_a_search_on_two_nodes_trains_on_both_and_its_run_folder_is_complete(
    two_nodes: Nodes, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    search = [
        "search", "--name", "two", "--runs-dir", str(tmp_path), "--controller", "random",
        "--trials", "4", "--workers", "2", "--cpus-per-trial", "1", "--scheduler", "none",
        "--budget", "quick", "--address", two_nodes.address,
    ]  # fmt: skip
    done = _nasfpn(*search, *data_args(tiny_dataset, backbone_checkpoint, tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = RunFolder(tmp_path / "two")
    trials = run.load_study().get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["node"] for t in trials}) == 2  # both nodes trained
    for t in trials:
        folder = run.trial_dir(t.number)
        assert json.loads((folder / "metrics.json").read_text())["metrics"]["AP"] == t.user_attrs["AP"]
        assert (folder / "genotype.json").is_file() and (folder / "checkpoint.pt").stat().st_size > 0
        assert list((folder / "tb").glob("events.*"))  # TensorBoard scalars
        assert not list(folder.rglob("*.partial"))
    assert run.baseline_metrics() is not None

    # What reads the run folder on the driver finds every trial.
    status = _nasfpn("status", str(run.path), cwd=tmp_path)
    assert status.returncode == 0 and "4/4" in status.stdout, status.stdout + status.stderr
    exported = _nasfpn("export", str(run.path), "--best", "--out", str(tmp_path / "best"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr

    # A comparison on the same cluster: its trainings' files reach the driver too.
    compare = ["compare", str(run.path), "--top", "1", "--baselines", "fpn", "--seeds", "1"]
    compared = _nasfpn(
        *compare, "--budget", "quick", "--workers", "2", "--address", two_nodes.address, cwd=tmp_path
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    jobs = sorted((run.path / "compare" / "jobs" / "quick").glob("*/seed0"))
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    assert (run.path / "compare" / "compare.csv").is_file()


def test_a_node_lost_mid_trial_fails_that_trial_with_the_reason_and_the_search_goes_on(
    two_nodes: Nodes, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    """Both nodes train (one CPU each, two at a time) when the worker node is SIGKILLed."""
    search = [
        sys.executable, "-m", "nas", "search", "--name", "lost", "--runs-dir", str(tmp_path),
        "--controller", "random", "--trials", "3", "--workers", "2", "--cpus-per-trial", "1",
        "--scheduler", "none", "--budget", "60", "--address", two_nodes.address,
    ]  # fmt: skip
    log = (tmp_path / "search.log").open("w")
    args = [*search, *data_args(tiny_dataset, backbone_checkpoint, tmp_path)]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    run = RunFolder(tmp_path / "lost")
    try:
        deadline = time.monotonic() + 300
        while _running(run) < 2:  # the baseline done, two study trials training: one on each node
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "search.log"
            ).read_text()
            time.sleep(0.5)
        two_nodes.command("kill")
        assert process.wait(timeout=600) == 0, (tmp_path / "search.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        two_nodes.command("add")  # two nodes again for whatever runs next
    trials = run.load_study().get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(trials) == 3 and len(failed) == 1 and not interrupted_numbers(trials)
    assert "Ray node was lost" in failed[0].user_attrs["failure"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and all((run.trial_dir(t.number) / "metrics.json").is_file() for t in complete)


def _running(run: RunFolder) -> int:
    try:
        trials = run.load_study().get_trials(deepcopy=False)
    except (KeyError, ValueError, OSError):  # not made yet
        return 0
    return sum(t.state == TrialState.RUNNING for t in trials)


def test_ray_imported_before_nasfpn_still_starts_and_joins_its_clusters() -> None:
    """A script that imports Ray first: its own ray.init must work (it failed when nasfpn set
    RAY_AUTH_MODE after Ray was imported), and so must a local cluster nasfpn starts for it."""
    script = (
        "import ray, nas.search\n"
        "from nas.search.cluster import ray_cluster\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False)\n"  # not the tests' clusters
        "print('started', ray.is_initialized())\n"
        "ray.shutdown()\n"
        "with ray_cluster():\n"
        "    print('joined', ray.cluster_resources()['CPU'] > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # as a fresh shell has it
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0 and "joined True" in done.stdout and "started True" in done.stdout, (
        done.stderr[-2000:]
    )


def test_an_address_where_no_cluster_answers_is_one_line_and_exit_2(
    tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    compare = [
        "compare",
        "--baselines",
        "fpn",
        "--seeds",
        "1",
        "--budget",
        "quick",
        "--out",
        str(tmp_path / "c"),
    ]
    done = _nasfpn(
        *compare,
        *data_args(tiny_dataset, backbone_checkpoint, tmp_path),
        "--address",
        "127.0.0.1:1",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in line
