"""nasfpn report: the HTML page and its PNGs, from a real SQLite study.

The studies here are made directly with Optuna -- genotypes sampled from the nasfpn space by a
random sampler, made-up metrics as user attributes -- rather than by a search, which would
train detectors (``helpers.make_run``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_run
from PIL import Image

from nas.cli import main
from nas.inspect.leaderboard import leaderboard
from nas.inspect.report import pareto_front, rolling_mean, write_report
from nas.search.runs import RunFolder, SearchConfig


def _check_report(index: Path, min_cells: int) -> str:
    page = index.read_text()
    pngs = re.findall(r'<img src="([^"]+)"', page)
    assert {"best_ap.png", "pareto.png", "learning_curve.png"} <= set(pngs)
    assert sum(name.startswith("cell_") for name in pngs) >= min_cells
    for name in pngs:
        path = index.parent / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as image:
            image.verify()  # a whole, valid PNG
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 200, (name, image.size)
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1], f"{name} is blank"
    return page


def test_report_of_a_four_trial_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "s4", trials=4)
    assert main(["report", str(run.path)]) == 0
    index = run.path / "report" / "index.html"
    assert str(index) in capsys.readouterr().out
    page = _check_report(index, min_cells=4)
    # The top trials beside the FPN baseline, best first, and the TensorBoard hint.
    study = run.load_study()
    best = max(study.trials, key=lambda t: t.user_attrs["AP"])
    rows = re.findall(r"<tr>(<td>.*?)</tr>", page)
    assert rows[0].startswith(f"<td>1</td><td>{best.number}</td><td>{best.user_attrs['AP'] * 100:.1f}</td>")
    assert '<tr class="baseline"><td>-</td><td>FPN</td><td>20.0</td>' in page
    assert f"tensorboard --logdir {run.path}" in page


def test_status_and_report_do_without_torch(tmp_path: Path) -> None:
    # Importing torch and torchvision takes seconds; reading a study needs neither.
    run = make_run(tmp_path / "s2", trials=2)
    probe = (
        "import sys; from nas.cli import main; "
        f"codes = [main(['status', {str(run.path)!r}]), main(['report', {str(run.path)!r}])]; "
        "print(codes, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))[:3])"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[0, 0] []"


def test_failed_pruned_and_running_trials(tmp_path: Path) -> None:
    run = make_run(tmp_path / "mixed", trials=8, failed={1, 5}, pruned={2, 3}, running={7})
    page = _check_report(write_report(run), min_cells=3)
    assert "3 complete, 2 stopped early, 2 failed, 1 running" in page
    # Strings from the study are escaped: the failure reason holds markup and quotes.
    assert "<b>loss</b>" not in page
    assert "x2: <code>RuntimeError: &lt;b&gt;loss&lt;/b&gt; is NaN &amp; &#x27;quoted&#x27;</code>" in page


def test_pareto_study_without_baseline_and_a_rewrite(tmp_path: Path) -> None:
    run = make_run(tmp_path / "pareto", trials=6, pareto=True, baseline=False)
    index = write_report(run, top=2)
    _check_report(index, min_cells=2)
    assert len(list(index.parent.glob("cell_*.png"))) == 2
    index = write_report(run, top=1)  # the earlier report's cells go
    assert len(list(index.parent.glob("cell_*.png"))) == 1


def test_a_study_with_no_finished_trial(tmp_path: Path) -> None:
    run = make_run(tmp_path / "young", trials=2, running={0, 1}, baseline=False)
    page = _check_report(write_report(run), min_cells=0)
    assert "No completed trial yet." in page


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasfpn: error: ") and err.count("\n") == 1
    run = RunFolder(tmp_path / "no-study")
    run.save_config(SearchConfig(name="no-study"))  # a search that has not started its study
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasfpn: error: ") and err.count("\n") == 1


def test_pareto_front_and_rolling_mean() -> None:
    points = [(1.0, 10.0), (2.0, 12.0), (2.0, 11.0), (3.0, 11.5), (0.5, 9.0), (4.0, 15.0)]
    assert pareto_front(points) == [4, 0, 1, 5]
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]


@pytest.mark.parametrize(("behind", "printed"), [(0.0004, "+0.0"), (-0.0006, "+0.1"), (0.0006, "-0.1")])
def test_the_best_trials_gain_over_fpn_is_rounded_once(tmp_path: Path, behind: float, printed: str) -> None:
    run = make_run(tmp_path / "gain", trials=3)
    best = max(t.user_attrs["AP"] for t in run.load_study().trials)
    path = run.baseline_dir("fpn") / "metrics.json"
    record = json.loads(path.read_text())
    record["metrics"]["AP"] = best + behind  # FPN this far ahead of the best trial
    path.write_text(json.dumps(record))
    last = leaderboard(run).splitlines()[-1]
    assert f": {printed} AP over FPN" in last, last
