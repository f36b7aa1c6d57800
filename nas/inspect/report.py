"""The report of a search: ``runs/NAME/report/index.html`` and its PNGs, from the run's study.

>>> write_report(RunFolder("runs/s1"))          # runs/s1/report/index.html

- ``best_ap.png``: the best AP so far against the trial number and against wall time;
- ``pareto.png``: AP against the neck's FLOPs and its CPU latency, the Pareto front marked
  (completed trials: a pruned trial's AP comes from a shorter training);
- ``learning_curve.png``: what the controller learns from -- its reward per trial (the study's
  value, or a pruned trial's last AP) with a rolling mean; AP in a Pareto study, which has no
  single reward;
- ``cell_NNNN.png``: the top trials' cells, drawn;
- a table of the top trials beside the baselines trained on the same proxy (``baseline/*/``).

The report only reads the study, so it can be made while the search runs. Every string that
comes from the study or the run folder is HTML-escaped. Plots use matplotlib's Agg canvas.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from nas.search.runs import RunFolder, SearchConfig, interrupted_numbers

__all__ = ["write_report"]

REPORT_DIR = "report"
_DPI = 100
_COLORS = {"complete": "#4c72b0", "pruned": "#8c8c8c", "failed": "#c44e52", "front": "#dd8452"}
_BASELINE_COLOR = "#55a868"


@dataclass(frozen=True)
class _Trial:
    """What the report needs of one Optuna trial."""

    number: int
    state: str  # complete | pruned | failed | running
    attrs: dict[str, Any]
    reward: float | None  # what the controller learns from (see the module docstring)
    seconds: float | None  # completion, in seconds since the study's first trial started

    @property
    def ap(self) -> float | None:
        value = self.attrs.get("AP")
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def write_report(run: RunFolder, out: str | Path | None = None, top: int = 5) -> Path:
    """Writes the report of ``run`` into ``out`` (default ``runs/NAME/report``); returns index.html.

    ``top`` cells are drawn; the table shows twice as many trials.
    """
    config = run.load_config()
    study = run.load_study()
    trials = _collect(study.get_trials(deepcopy=False), len(study.directions) > 1)
    out = Path(out) if out is not None else run.path / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("cell_*.png"):  # cells of an earlier report's top trials
        stale.unlink()

    baselines = _baselines(run)
    completed = sorted(
        (t for t in trials if t.state == "complete" and t.ap is not None), key=lambda t: -(t.ap or 0.0)
    )
    fpn = baselines.get("fpn")
    _save(_plot_best(trials, fpn), out / "best_ap.png")
    _save(_plot_pareto(trials, fpn), out / "pareto.png")
    _save(_plot_learning(trials, config, len(study.directions) > 1), out / "learning_curve.png")
    cells = _draw_cells(completed[:top], out)
    page = _html(run, config, trials, completed[: 2 * top], baselines, cells, out)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# --- reading the study ---------------------------------------------------------------------


def _collect(frozen: Sequence[FrozenTrial], multi_objective: bool) -> list[_Trial]:
    interrupted = interrupted_numbers(list(frozen))
    starts = [t.datetime_start for t in frozen if t.datetime_start is not None]
    origin: datetime | None = min(starts) if starts else None
    trials = []
    for t in frozen:
        if t.number in interrupted:
            continue  # killed with its search and rerun under a new number
        state = {
            TrialState.COMPLETE: "complete",
            TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed",
        }.get(t.state, "running")
        seconds = None
        if origin is not None and t.datetime_complete is not None:
            seconds = (t.datetime_complete - origin).total_seconds()
        trials.append(_Trial(t.number, state, dict(t.user_attrs), _reward(t, multi_objective), seconds))
    return trials


def _reward(trial: FrozenTrial, multi_objective: bool) -> float | None:
    """The controllers' reward (``nas.controllers.common.observed_value``): the value of a
    complete trial, the last intermediate value of a pruned one; AP in a Pareto study."""
    if multi_objective:
        value = (
            trial.user_attrs.get("AP") if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
        )
    elif trial.state == TrialState.COMPLETE:
        value = trial.value
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    else:
        value = None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _baselines(run: RunFolder) -> dict[str, dict[str, Any]]:
    """Every baseline trained in the run folder (``baseline/NECK/metrics.json``), FPN first."""
    root = run.path / "baseline"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = {}
    for name in sorted(names, key=lambda n: (n != "fpn", n)):
        try:
            metrics = run.baseline_metrics(name)
        except (OSError, ValueError, KeyError):
            metrics = None  # a baseline still training, or a broken file: left out
        if metrics is not None:
            found[name] = metrics
    return found


# --- plots -----------------------------------------------------------------------------------


def _figure(columns: int, width: float = 5.5, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * columns, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, columns, k + 1) for k in range(columns)]
    for ax in axes:
        ax.grid(True, color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=_DPI)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "hours"
    if seconds >= 3 * 60:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _baseline_line(ax: Axes, fpn: dict[str, Any] | None) -> None:
    if fpn is not None and "AP" in fpn:
        ax.axhline(fpn["AP"] * 100, color=_BASELINE_COLOR, linestyle="--", linewidth=1.2, label="FPN")


def _plot_best(trials: list[_Trial], fpn: dict[str, Any] | None) -> Figure:
    fig, (by_trial, by_time) = _figure(2)
    done = [t for t in trials if t.state == "complete" and t.ap is not None]
    by_trial.set_title("best AP so far, by trial")
    by_trial.set_xlabel("trial")
    by_time.set_title("best AP so far, by wall time")
    for ax in (by_trial, by_time):
        ax.set_ylabel("AP (%)")
    if not done:
        for ax in (by_trial, by_time):
            _empty(ax, "no completed trial yet")
        return fig

    numbers = np.array([t.number for t in done])
    aps = np.array([t.ap for t in done]) * 100
    by_trial.scatter(numbers, aps, s=12, color=_COLORS["complete"], alpha=0.45, label="complete trial")
    by_trial.step(numbers, np.maximum.accumulate(aps), where="post", color="#222222", label="best so far")
    _baseline_line(by_trial, fpn)
    by_trial.legend(loc="lower right", fontsize=8)

    timed = sorted((t for t in done if t.seconds is not None), key=lambda t: t.seconds or 0.0)
    if timed:
        scale, unit = _time_unit(max(t.seconds or 0.0 for t in timed))
        times = np.array([t.seconds for t in timed]) / scale
        timed_aps = np.array([t.ap for t in timed]) * 100
        by_time.scatter(times, timed_aps, s=12, color=_COLORS["complete"], alpha=0.45)
        by_time.step(times, np.maximum.accumulate(timed_aps), where="post", color="#222222")
        by_time.set_xlabel(f"wall time since the first trial started ({unit})")
        _baseline_line(by_time, fpn)
    else:
        _empty(by_time, "no trial has a completion time")
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, AP) no other point beats: no higher AP at a cost as low or
    lower; sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _plot_pareto(trials: list[_Trial], fpn: dict[str, Any] | None) -> Figure:
    fig, axes = _figure(2)
    done = [t for t in trials if t.state == "complete" and t.ap is not None]
    for ax, key, label, scale in (
        (axes[0], "flops", "neck GFLOPs (512x512)", 1e-9),
        (axes[1], "latency_ms", "neck CPU latency, ms (512x512, 1 thread)", 1.0),
    ):
        ax.set_title(f"AP against {'FLOPs' if key == 'flops' else 'latency'}")
        ax.set_xlabel(label)
        ax.set_ylabel("AP (%)")
        have = [t for t in done if isinstance(t.attrs.get(key), int | float)]
        if not have:
            _empty(ax, f"no completed trial with {key} yet")
            continue
        points = [(float(t.attrs[key]) * scale, (t.ap or 0.0) * 100) for t in have]
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        ax.scatter(xs, ys, s=14, color=_COLORS["complete"], alpha=0.5, label="complete trial")
        front = pareto_front(points)
        ax.step(xs[front], ys[front], where="post", color=_COLORS["front"], linewidth=1.4)
        ax.scatter(
            xs[front],
            ys[front],
            s=40,
            facecolor="none",
            edgecolor=_COLORS["front"],
            linewidth=1.6,
            label="Pareto front",
            zorder=3,
        )
        for i in front[:12]:
            ax.annotate(
                str(have[i].number),
                (xs[i], ys[i]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="#7a3d12",
            )
        if fpn is not None and key in fpn and "AP" in fpn:
            ax.scatter(
                [fpn[key] * scale],
                [fpn["AP"] * 100],
                marker="*",
                s=140,
                color=_BASELINE_COLOR,
                edgecolor="#1d4d2a",
                label="FPN",
                zorder=4,
            )
        ax.legend(loc="lower right", fontsize=8)
    return fig


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each value and up to ``window - 1`` before it."""
    data = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(data, 0, 0.0))
    index = np.arange(1, len(data) + 1)
    low = np.maximum(index - window, 0)
    return (sums[index] - sums[low]) / (index - low)


def _plot_learning(trials: list[_Trial], config: SearchConfig, multi_objective: bool) -> Figure:
    fig, (ax,) = _figure(1, width=11.0)
    objective = config.objective or {}
    if multi_objective:
        what, scale = "AP (%) -- a Pareto study has no single reward", 100.0
    elif objective.get("cost"):
        what, scale = f"reward: AP x ({objective['cost']} / target)^{objective.get('weight', -0.07)}", 1.0
    else:
        what, scale = "reward: AP (%)", 100.0
    ax.set_title(f"the {config.controller} controller's learning curve")
    ax.set_xlabel("trial")
    ax.set_ylabel(what)
    rewarded = [t for t in trials if t.reward is not None]
    if not rewarded:
        _empty(ax, "no trial with a reward yet")
        return fig
    for state, marker in (("complete", "o"), ("pruned", "o")):
        chosen = [t for t in rewarded if t.state == state]
        if chosen:
            ax.scatter(
                [t.number for t in chosen],
                [(t.reward or 0.0) * scale for t in chosen],
                s=14,
                marker=marker,
                facecolor=_COLORS[state] if state == "complete" else "none",
                edgecolor=_COLORS[state],
                alpha=0.6,
                label=f"{state} trial" + (" (last AP, shorter training)" if state == "pruned" else ""),
            )
    window = max(3, min(20, len(rewarded) // 8))
    numbers = [t.number for t in rewarded]
    mean = rolling_mean([(t.reward or 0.0) * scale for t in rewarded], window)
    ax.plot(numbers, mean, color="#222222", linewidth=1.8, label=f"rolling mean of {window}")
    failed = [t.number for t in trials if t.state == "failed"]
    if failed:
        low = ax.get_ylim()[0]
        ax.scatter(failed, [low] * len(failed), marker="x", color=_COLORS["failed"], s=20, label="failed")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _draw_cells(top: list[_Trial], out: Path) -> list[tuple[_Trial, str | None, str]]:
    """Draws each trial's cell; (trial, PNG name or None, why not) per trial."""
    from nas.genotype import Genotype, GenotypeError
    from nas.inspect.draw import draw_genotype

    drawn: list[tuple[_Trial, str | None, str]] = []
    for rank, trial in enumerate(top, 1):
        name = f"cell_{trial.number:04d}.png"
        try:
            genotype = Genotype.from_dict(trial.attrs.get("genotype"))
        except GenotypeError as e:
            drawn.append((trial, None, f"its genotype does not load: {e}"))
            continue
        title = f"#{rank}: trial {trial.number}, AP {(trial.ap or 0.0) * 100:.1f}"
        draw_genotype(genotype, out / name, title=title)
        drawn.append((trial, name, ""))
    return drawn


# --- the page --------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; text-align: right; }
td.text, th.text { text-align: left; font-family: ui-monospace, monospace; font-size: 0.85em; }
tr.baseline td { background: #eef6ef; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.25em; }
.muted { color: #666; }
"""

_TABLE = ("#", "trial", "AP", "AP50", "AP75", "APs", "APm", "APl", "params", "GFLOPs", "CPU ms", "ΔAP vs FPN")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html(
    run: RunFolder,
    config: SearchConfig,
    trials: list[_Trial],
    top: list[_Trial],
    baselines: dict[str, dict[str, Any]],
    cells: list[tuple[_Trial, str | None, str]],
    out: Path,
) -> str:
    counts = Counter(t.state for t in trials)
    objective = config.objective or {}
    objective_text = (
        "AP" if not objective.get("cost") else f"AP and {objective['cost']} ({objective.get('form')})"
    )
    spent = max((t.seconds for t in trials if t.seconds is not None), default=None)
    spent_text = ""
    if spent is not None:
        scale, unit = _time_unit(spent)
        spent_text = f"; {spent / scale:.1f} {unit} of wall time"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>nasfpn report: {_e(config.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Search <code>{_e(config.name)}</code></h1>",
        f'<p class="muted">space {_e(config.space)}, controller {_e(config.controller)}, objective '
        f"{_e(objective_text)}; {len(trials)} of {_e(config.trials)} trials: {counts['complete']} complete, "
        f"{counts['pruned']} stopped early, {counts['failed']} failed, {counts['running']} running"
        f"{_e(spent_text)}. Made {_e(datetime.now().strftime('%Y-%m-%d %H:%M'))}.</p>",
        "<h2>Top trials and baselines</h2>",
        _table(top, baselines, run, out),
        '<p class="muted">AP is COCO AP on the proxy (one seed); the baselines were trained on the '
        "same proxy. Params, FLOPs and latency are the neck's alone.</p>",
    ]
    failures = Counter(str(t.attrs.get("failure", "unknown")) for t in trials if t.state == "failed")
    if failures:
        parts.append("<p>Failures:</p><ul>")
        parts += [f"<li>x{count}: <code>{_e(reason)}</code></li>" for reason, count in failures.most_common()]
        parts.append("</ul>")
    parts += [
        "<h2>Progress</h2>",
        _figure_html("best_ap.png", "The best AP so far against the trial number and wall time."),
        "<h2>AP against cost</h2>",
        _figure_html(
            "pareto.png",
            "Complete trials; the Pareto front (no trial has a higher AP at a lower cost) is ringed "
            "and numbered.",
        ),
        "<h2>The controller</h2>",
        _figure_html(
            "learning_curve.png",
            "The reward the controller learns from, per trial, with a rolling mean; failed trials are "
            "crosses on the bottom edge.",
        ),
        "<h2>The top cells</h2>",
    ]
    if not cells:
        parts.append('<p class="muted">No completed trial yet.</p>')
    for rank, (trial, name, why) in enumerate(cells, 1):
        caption = f"#{rank}: trial {trial.number}, AP {(trial.ap or 0.0) * 100:.1f}"
        summary = trial.attrs.get("summary")
        if summary:
            caption += f" -- {summary}"
        if name is None:
            parts.append(f"<p>{_e(caption)}: not drawn, {_e(why)}</p>")
        else:
            parts.append(_figure_html(name, caption))
    parts += [
        "<h2>Training curves</h2>",
        "<p>Each trial's loss and AP curves are TensorBoard event files in <code>trials/NNNN/tb/</code>: "
        f"<code>tensorboard --logdir {_e(run.path)}</code></p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _figure_html(name: str, caption: str) -> str:
    return (
        f'<figure><img src="{_e(name)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _table(top: list[_Trial], baselines: dict[str, dict[str, Any]], run: RunFolder, out: Path) -> str:
    fpn_ap = baselines.get("fpn", {}).get("AP")
    header = "".join(f"<th>{_e(c)}</th>" for c in _TABLE) + '<th class="text">cell</th>'
    rows = [f"<table><tr>{header}</tr>"]
    for rank, trial in enumerate(top, 1):
        genotype_file = run.trial_dir(trial.number) / "genotype.json"
        trial_cell = str(trial.number)
        if genotype_file.is_file():
            href = Path(os.path.relpath(genotype_file, out)).as_posix()
            trial_cell = f'<a href="{_e(href)}">{_e(trial.number)}</a>'
        else:
            trial_cell = _e(trial_cell)
        rows.append(_row(str(rank), trial_cell, trial.attrs, fpn_ap, _e(trial.attrs.get("summary", ""))))
    for name, metrics in baselines.items():
        rows.append(
            _row("-", _e(name.upper()), metrics, fpn_ap, f"{_e(name)} (baseline, same proxy)", "baseline")
        )
    if len(rows) == 1:
        rows.append(f'<tr><td colspan="{len(_TABLE) + 1}" class="text">no completed trial yet</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _row(rank: str, trial: str, m: dict[str, Any], fpn_ap: float | None, cell: str, css: str = "") -> str:
    def number(key: str, scale: float, digits: int, suffix: str = "") -> str:
        value = m.get(key)
        return f"{value * scale:.{digits}f}{suffix}" if isinstance(value, int | float) else "-"

    delta = "-"
    if isinstance(m.get("AP"), int | float) and isinstance(fpn_ap, int | float):
        delta = f"{(m['AP'] - fpn_ap) * 100:+.1f}"
    values = [
        number("AP", 100, 1),
        number("AP50", 100, 1),
        number("AP75", 100, 1),
        number("APs", 100, 1),
        number("APm", 100, 1),
        number("APl", 100, 1),
        number("params", 1e-6, 2, "M"),
        number("flops", 1e-9, 2),
        number("latency_ms", 1, 1),
        delta,
    ]
    cells = [rank, trial] + [_e(v) for v in values]
    css_attr = f' class="{css}"' if css else ""
    return f"<tr{css_attr}>" + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="text">{cell}</td></tr>'
