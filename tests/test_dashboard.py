"""nasfpn dashboard: optuna-dashboard on a real SQLite study, looked at in a real headless browser.

The browser is Debian's chromium driven through its chromedriver by Selenium; ``make test``
installs both (see the Makefile's ``browser`` target). The study is made as in test_report.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import make_run
from optuna.trial import TrialState
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from nas.cli import main
from nas.inspect.dashboard import PUBLISHED, artifact_store, publish_trial
from nas.search.runs import RunFolder
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
WAIT = 20.0  # seconds for the page to show something; a loaded 2-core machine is slow


def _executable(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise RuntimeError(
        f"none of {', '.join(names)} is installed: `make test` installs Debian's chromium and "
        "chromium-driver (make browser)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _executable("chromium", "chromium-browser", "google-chrome")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(_executable("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[RunFolder, str, subprocess.Popen[str]]]:
    """A 4-trial study (one failed, one running) served by ``nasfpn dashboard --port 0``."""
    run = make_run(tmp_path / "s4", trials=4, failed={1}, running={3})
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nas", "dashboard", str(run.path), "--port", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            # Ctrl-C stops it, even when this test runs where SIGINT is ignored (a background job).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 60
        while (match := re.search(r"at (http://\S+/dashboard)", log.read_text())) is None:
            assert process.poll() is None, f"the dashboard exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"no URL from the dashboard: {log.read_text()}"
            time.sleep(0.2)
        yield run, match.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    # Ctrl-C is the way to stop it: a clean exit.
    assert process.returncode == 0 and "dashboard stopped" in log.read_text(), log.read_text()


def _wait_text(driver: webdriver.Chrome, text: str, timeout: float = WAIT) -> None:
    try:
        WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(
            f"{text!r} not on {driver.current_url} after {timeout} s; it shows: {body[:500]!r}"
        ) from None


def _wait_published(run: RunFolder, count: int) -> None:
    study = run.load_study()
    deadline = time.monotonic() + 60
    while True:
        attrs = study._storage.get_study_system_attrs(study._study_id)
        if sum(key.startswith(PUBLISHED) for key in attrs) >= count:
            return
        assert time.monotonic() < deadline, f"the dashboard published fewer than {count} trials"
        time.sleep(0.3)


def _cell_pictures(driver: webdriver.Chrome) -> list[str]:
    """Sources of the loaded pictures that come from the trial's artifacts."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => i.src.includes('/artifacts/') && i.complete && i.naturalWidth > 400)"
        ".map(i => i.src)"
    )


def test_dashboard_shows_the_trials_and_their_cells(
    dashboard: tuple[RunFolder, str, subprocess.Popen[str]], browser: webdriver.Chrome
) -> None:
    run, url, process = dashboard
    study = run.load_study()
    _wait_published(run, 4)  # the running trial too: it has its genotype

    # The home page lists the study; its link leads to the study's page.
    browser.get(url)
    _wait_text(browser, "s4")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.XPATH, "//*[text()='s4']"))
    browser.find_element(By.XPATH, "//*[text()='s4']").click()
    WebDriverWait(browser, WAIT).until(lambda d: "/dashboard/studies/" in d.current_url)
    _wait_text(browser, "History")

    # The trial list: every trial with its state; the first trial's note shows its cell.
    browser.get(f"{url}/studies/{study._study_id}/trials")
    for text in ("4 Trials", "Trial 0", "Trial 1", "Trial 2", "Trial 3", "Fail", "Running"):
        _wait_text(browser, text)
    _wait_text(browser, "Trial 0: its cell")
    WebDriverWait(browser, WAIT).until(lambda d: _cell_pictures(d))
    first = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, 0)
    assert all(f"/artifacts/{study._study_id}/{first}/" in src for src in _cell_pictures(browser))
    _wait_text(browser, "genotype.json")  # the second artifact

    # While the dashboard runs, the search adds a trial: it is published and appears.
    space = get_space("nasfpn")
    study.sampler = optuna.samplers.RandomSampler(seed=7)
    trial = study.ask()
    genotype = space.sample(trial)
    trial.set_user_attr("genotype", genotype.to_dict())
    trial.set_user_attr("summary", space.summary(genotype))
    trial.set_user_attr("AP", 0.5)
    study.tell(trial, 0.5, state=TrialState.COMPLETE)
    _wait_published(run, 5)
    browser.refresh()
    _wait_text(browser, "5 Trials")
    browser.find_element(By.XPATH, "//*[text()='Trial 4']").click()
    _wait_text(browser, "Trial 4: its cell")
    WebDriverWait(browser, WAIT).until(
        lambda d: any(f"/{trial._trial_id}/" in src.split("/artifacts/")[1] for src in _cell_pictures(d))
    )
    assert process.poll() is None


def test_publish_trial_is_once_and_keeps_a_written_note(tmp_path: Path) -> None:
    from optuna_dashboard import get_note, save_note

    run = make_run(tmp_path / "p", trials=2, baseline=False, running={1})
    study = run.load_study()
    store = artifact_store(run)
    running = optuna.Trial(study, study.trials[1]._trial_id)
    save_note(running, "my own note")
    assert publish_trial(study, 0, run, store) and publish_trial(study, 1, run, store)
    assert not publish_trial(study, 0, run, store)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith("dashboard:artifacts:")]
    assert sorted(m["filename"] for m in metas) == ["cell.png", "cell.png", "genotype.json", "genotype.json"]
    assert len(os.listdir(run.path / "artifacts")) == 4
    assert get_note(running) == "my own note"
    assert "Trial 0: its cell" in get_note(optuna.Trial(study, study.trials[0]._trial_id))


def test_dashboard_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasfpn: error: ") and "no config.json" in err and err.count("\n") == 1

    run = make_run(tmp_path / "busy", trials=1, baseline=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(run.path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"nasfpn: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
