"""Several machines: a search and a comparison on a Ray cluster of two nodes (tests/ray_nodes.py:
separate raylets and object stores, one CPU each), joined with --address as a cluster user would.

Each node holds one training at a time, so with two at a time both nodes train -- shown by the
node id each trial records -- and the run folder on the driver must be complete all the same:
a trial's files travel through Ray (nas.search.artifacts), not through a shared disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from nas.search.runs import RunFolder

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """The address of a two-node Ray cluster, stopped when the module's tests are done."""
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "ray_nodes.py"), "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    address = holder.stdout.readline().strip()
    assert address, "the two-node cluster did not start"
    yield address
    holder.stdin.close()
    holder.wait(timeout=120)


def _nasfpn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _data_args(dataset: Path, checkpoint: Path, runs: Path) -> list[str]:
    return [
        "--train-json", str(dataset / "annotations" / "instances_train.json"),
        "--val-json", str(dataset / "annotations" / "instances_val.json"),
        "--images", str(dataset / "images"),
        "--width", "32",
        "--backbone-checkpoint", str(checkpoint),
        "--cache-dir", str(runs / "cache"),
    ]  # fmt: skip


def test_a_search_on_two_nodes_trains_on_both_and_its_run_folder_is_complete(
    two_nodes: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    search = [
        "search", "--name", "two", "--runs-dir", str(tmp_path), "--controller", "random",
        "--trials", "4", "--workers", "2", "--cpus-per-trial", "1", "--scheduler", "none",
        "--budget", "quick", "--address", two_nodes,
    ]  # fmt: skip
    done = _nasfpn(*search, *_data_args(tiny_dataset, backbone_checkpoint, tmp_path), cwd=tmp_path)
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
    compared = _nasfpn(*compare, "--budget", "quick", "--workers", "2", "--address", two_nodes, cwd=tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    jobs = sorted((run.path / "compare" / "jobs" / "quick").glob("*/seed0"))
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    assert (run.path / "compare" / "compare.csv").is_file()
