"""One Optuna study on a real PostgreSQL server (conftest's ``postgres_url``), shared by several
search drivers at once, as searches started on several machines share it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import optuna
import pytest
from helpers import search_args
from optuna.trial import TrialState

from nas.cli import main
from nas.inspect.dashboard import make_dashboard_server
from nas.search import runs
from nas.search.runs import RunFolder, interrupted_numbers


def _search(name: str, runs: Path, dataset: Path, checkpoint: Path, storage: str, *extra: str) -> list[str]:
    """A search in its own process on a shared storage, one trial at a time."""
    shared = ("--storage", storage, "--controller", "random", "--scheduler", "none", "--workers", "1")
    return [sys.executable, "-m", "nas", *search_args(name, runs, dataset, checkpoint, *shared, *extra)]


def test_two_drivers_share_one_study_with_no_trial_lost_or_numbered_twice(
    postgres_url: str, ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    """Two searches of the same name on one PostgreSQL study, each with its own run folder (as on
    two machines), started together; status, report and the dashboard read it."""
    storage = f"{postgres_url}"
    common = ("--trials", "4", "--budget", "60", "--address", ray_cluster)
    logs = [tmp_path / f"driver{i}.log" for i in range(2)]
    drivers = [
        subprocess.Popen(
            _search("shared", tmp_path / f"machine{i}", tiny_dataset, backbone_checkpoint, storage, *common),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]
    for driver, log in zip(drivers, logs, strict=True):
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    runs = [RunFolder(tmp_path / f"machine{i}" / "shared") for i in range(2)]
    trials = runs[0].load_study().get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(4))  # none lost, none numbered twice
    assert all(t.state == TrialState.COMPLETE for t in trials)
    by_driver = {t.user_attrs["driver"] for t in trials}
    assert len(by_driver) == 2, "one driver ran every trial: they did not overlap"
    for t in trials:  # each trial's files are in the run folder of the driver that ran it
        assert sum((run.trial_dir(t.number) / "metrics.json").is_file() for run in runs) == 1

    status = subprocess.run(
        [sys.executable, "-m", "nas", "status", str(runs[1].path)], capture_output=True, text=True
    )
    assert status.returncode == 0 and "4/4 trials done" in status.stdout, status.stderr
    report = subprocess.run(
        [sys.executable, "-m", "nas", "report", str(runs[0].path), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0 and (tmp_path / "report" / "index.html").is_file(), report.stderr
    server = make_dashboard_server(runs[0], "127.0.0.1", 0)  # optuna-dashboard on the same study
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_port}/api/studies"
        (study,) = [
            s
            for s in json.loads(urlopen(api, timeout=30).read())["study_summaries"]
            if s["study_name"] == "shared"
        ]
        detail = json.loads(urlopen(f"{api}/{study['study_id']}", timeout=30).read())
        assert sorted(t["number"] for t in detail["trials"]) == list(range(4))
    finally:
        server.shutdown()


def test_a_driver_killed_on_a_shared_study_resumes_as_on_sqlite(
    postgres_url: str, ray_cluster: str, tiny_dataset: Path, backbone_checkpoint: Path, tmp_path: Path
) -> None:
    args = _search("killed", tmp_path, tiny_dataset, backbone_checkpoint, postgres_url, "--trials", "1")
    args += ["--budget", "60", "--address", ray_cluster]
    log = tmp_path / "first.log"
    first = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)
    run = RunFolder(tmp_path / "killed")
    deadline = time.monotonic() + 300
    try:
        while True:  # a trial training, its decisions all made
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                trials = run.load_study().get_trials(deepcopy=False)
            except (KeyError, OSError, ValueError):  # no run folder or study yet
                trials = []
            if any(t.state == TrialState.RUNNING and "genotype" in t.user_attrs for t in trials):
                break
            time.sleep(0.3)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed = [t.number for t in run.load_study().get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{len(killed)} interrupted trial(s) will be rerun" in resumed.stdout
    trials = run.load_study().get_trials(deepcopy=False)
    assert interrupted_numbers(trials) == set(killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1


@pytest.mark.parametrize(
    ("url", "named", "reason"),
    [
        ("postgresql://postgres@127.0.0.1:1/nasfpn", "127.0.0.1:1/nasfpn", "refused"),
        ("DATABASE/nasfpn_absent", "nasfpn_absent", 'database "nasfpn_absent" does not exist'),
        ("postgresql://postgres:secret@127.0.0.1:1/nasfpn", "postgres:***@127.0.0.1:1", "refused"),
    ],
)
def test_an_unreachable_or_wrong_database_is_one_line_and_exit_2(
    url: str,
    named: str,
    reason: str,
    postgres_url: str,
    tiny_dataset: Path,
    backbone_checkpoint: Path,
    tmp_path: Path,
    capsys,
) -> None:
    url = url.replace("DATABASE", postgres_url.rsplit("/", 1)[0])
    args = _search(
        "bad", tmp_path, tiny_dataset, backbone_checkpoint, url, "--trials", "1", "--budget", "quick"
    )
    assert main(args[3:]) == 2  # in this process: past "python -m nas"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert named in line and reason in line and "secret" not in line


def test_a_resume_reruns_trials_of_drivers_gone_and_leaves_live_ones(postgres_url: str, monkeypatch) -> None:
    """Running trials: of a driver elsewhere with a fresh heartbeat, or of a live process here --
    left alone; elsewhere and silent past the grace period, or of a process here that is gone --
    failed and enqueued again."""
    monkeypatch.setattr(runs, "HEARTBEAT", 1)
    monkeypatch.setattr(runs, "GRACE", 2)
    storage = runs.open_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name=f"stale-{time.time()}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = runs.socket.gethostname()
    drivers = {
        "silent elsewhere": "other-host:1",
        "beating elsewhere": "other-host:2",
        "alive here": f"{host}:{os.getppid()}",
        "gone here": f"{host}:{dead.stdout.strip()}",
    }
    trials = {}
    for name, driver in drivers.items():
        trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
        trial.set_user_attr("driver", driver)
        trials[name] = trial
    storage.record_heartbeat(trials["silent elsewhere"]._trial_id)
    time.sleep(2.5)
    storage.record_heartbeat(trials["beating elsewhere"]._trial_id)

    assert runs.requeue_interrupted(study) == 2
    states = {name: study.trials[trial.number].state for name, trial in trials.items()}
    assert states == {
        "silent elsewhere": TrialState.FAIL,
        "beating elsewhere": TrialState.RUNNING,
        "alive here": TrialState.RUNNING,
        "gone here": TrialState.FAIL,
    }
    reruns = sorted(t.user_attrs["rerun_of"] for t in study.get_trials(states=(TrialState.WAITING,)))
    assert reruns == sorted([trials["silent elsewhere"].number, trials["gone here"].number])


def test_a_driver_keeps_its_running_trials_alive_with_heartbeats(postgres_url: str, monkeypatch) -> None:
    from nas.search.driver import _heartbeats

    monkeypatch.setattr(runs, "HEARTBEAT", 1)
    monkeypatch.setattr(runs, "GRACE", 2)
    storage = runs.open_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name=f"beats-{time.time()}")
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    trial.set_user_attr("driver", "other-host:1")  # a driver another resume cannot see die
    with _heartbeats(storage, {"tune-id": trial}):
        time.sleep(3.5)  # past the grace period: alive only by its heartbeats
        assert runs.requeue_interrupted(study) == 0
    time.sleep(2.5)  # its driver stopped beating
    assert runs.requeue_interrupted(study) == 1
