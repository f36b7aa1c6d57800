"""Run folders: opening a run's study while a search is creating it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from subprocess import PIPE, Popen

import optuna
import pytest

from nas.cli import main
from nas.search.runs import RunFolder, SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_a_reader_before_the_study_exists_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunFolder(tmp_path / "early")
    run.save_config(SearchConfig(name="early"))
    assert main(["status", str(run.path)]) == 2
    assert "has not created its study yet" in capsys.readouterr().err
    assert not (run.path / "study.db").exists()  # the search that creates it cannot be raced


def test_processes_opening_a_fresh_study_at_once_all_get_it(tmp_path: Path) -> None:
    # A search creating its study while workers, `status` or the dashboard open it: each
    # Optuna storage stamps a fresh database's schema, and all but one of them collide.
    run = RunFolder(tmp_path / "fresh")
    run.save_config(SearchConfig(name="fresh"))
    start = time.time() + 4  # after every process has imported optuna
    opener = (
        f"import time; from nas.search.runs import RunFolder; run = RunFolder({str(run.path)!r}); "
        f"time.sleep(max(0.0, {start!r} - time.time())); "
        "print(run.open_study(run.load_config(), ['maximize']).study_name)"
    )
    command = [sys.executable, "-c", opener]
    processes = [Popen(command, cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in processes]
    outcomes = [(p.returncode, out.strip()) for p, (out, _) in zip(processes, results)]
    assert outcomes == [(0, "fresh")] * 6, [err.strip().splitlines()[-1:] for _, err in results]
    summaries = optuna.get_all_study_summaries(run.storage_url(run.load_config()))
    assert [s.study_name for s in summaries] == ["fresh"]
