"""The leaderboard of a run: its best trials beside FPN trained on the same proxy."""

from __future__ import annotations

from collections import Counter
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from nas.search.runs import RunFolder, count_done, interrupted_numbers
from nas.tables import format_table

COLUMNS = ("#", "trial", "AP", "AP50", "APs", "APm", "APl", "params", "GFLOPs", "CPU ms", "genotype")


def leaderboard(run: RunFolder, top: int = 10) -> str:
    """A text table of the ``top`` completed trials by AP, the FPN reference and the failures."""
    config = run.load_config()
    study = run.load_study()
    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    completed = [t for t in trials if t.state == TrialState.COMPLETE and "AP" in t.user_attrs]
    completed.sort(key=lambda t: t.user_attrs["AP"], reverse=True)
    failures = Counter(
        t.user_attrs.get("failure", "unknown")
        for t in trials
        if t.state == TrialState.FAIL and t.number not in interrupted
    )
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    lines = [
        f"{config.name}: space {config.space}, controller {config.controller}; "
        f"{count_done(study)}/{config.trials} trials done ({len(completed)} complete, "
        f"{pruned} stopped early, {sum(failures.values())} failed)"
    ]
    rows: list[tuple[str, ...]] = [COLUMNS]
    rows += [_row(str(rank), str(t.number), t.user_attrs) for rank, t in enumerate(completed[:top], 1)]
    fpn = run.baseline_metrics()
    if fpn is not None:
        rows.append(_row("-", "FPN", fpn, summary="fpn (baseline, same proxy)"))
    lines.append(format_table(rows))
    for reason, count in failures.most_common():
        lines.append(f"failed x{count}: {reason}")
    if completed and fpn is not None:
        # Rounded first, then + 0.0: a gain that rounds to nothing prints "+0.0", never "-0.0".
        gain = round((completed[0].user_attrs["AP"] - fpn["AP"]) * 100, 1) + 0.0
        lines.append(f"best trial {completed[0].number}: {gain:+.1f} AP over FPN on this proxy (one seed)")
    return "\n".join(lines)


def best_trial(run: RunFolder) -> FrozenTrial | None:
    """The completed trial with the highest AP."""
    trials = [
        t
        for t in run.load_study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "AP" in t.user_attrs
    ]
    return max(trials, key=lambda t: t.user_attrs["AP"], default=None)


def _row(rank: str, trial: str, m: dict[str, Any], summary: str | None = None) -> tuple[str, ...]:
    def pct(key: str) -> str:
        return f"{m[key] * 100:.1f}" if key in m else "-"

    params = f"{m['params'] / 1e6:.2f}M" if "params" in m else "-"
    flops = f"{m['flops'] / 1e9:.2f}" if "flops" in m else "-"
    latency = f"{m['latency_ms']:.1f}" if "latency_ms" in m else "-"
    return (
        rank,
        trial,
        pct("AP"),
        pct("AP50"),
        pct("APs"),
        pct("APm"),
        pct("APl"),
        params,
        flops,
        latency,
        summary if summary is not None else m.get("summary", ""),
    )
