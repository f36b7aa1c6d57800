"""The live view of a running search: one line per finished trial with the search's state.

trial 7 COMPLETE  AP  14.2  | 8/20 done, 1 failed, 2 pruned, 2 running, best AP 15.1 (#5), ETA 6 min
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.search.runs import count_done, interrupted_numbers


class LiveView:
    """Prints a status line each time a trial (or the FPN baseline) finishes."""

    def __init__(
        self,
        study: optuna.Study,
        total: int,
        remaining: int,
        workers: int,
        out: Callable[[str], None],
        gpus_per_trial: float = 0.0,
    ) -> None:
        self.study = study
        self.total = total
        self.remaining = remaining
        self.workers = workers
        self.out = out
        self.start = time.perf_counter()
        self.finished = 0  # trials finished in this session (for the ETA)
        self.fpn_ap: float | None = None
        self.gpus_per_trial = gpus_per_trial
        self.said_cpu_fallback = False

    def trial_finished(self, number: Any, result: dict[str, Any], state: str) -> None:
        if self.gpus_per_trial > 0 and result.get("device") == "cpu" and not self.said_cpu_fallback:
            self.said_cpu_fallback = True
            self.out(
                f"trials get {self.gpus_per_trial:g} GPU each, but torch sees no CUDA where they run "
                f"(node {result.get('node', '?')}): they train on the CPU"
            )
        if number == "fpn":
            if "failure" in result:
                self.out(f"baseline FPN failed: {result['failure']}")
            else:
                self.fpn_ap = float(result["AP"])
                self.out(f"baseline FPN: AP {self.fpn_ap * 100:.1f}")
            return
        self.finished += 1
        self.remaining -= 1
        what = result.get("failure") or f"AP {float(result.get('AP', 0.0)) * 100:5.1f}"
        self.out(f"trial {number} {state:<8} {what}  | {self.status()}")

    def status(self) -> str:
        trials = self.study.get_trials(deepcopy=False)
        interrupted = interrupted_numbers(trials)
        failed = sum(t.state == TrialState.FAIL and t.number not in interrupted for t in trials)
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        parts = [f"{count_done(self.study)}/{self.total} done", f"{failed} failed", f"{pruned} pruned"]
        parts.append(f"{running} running")
        scored = [t for t in trials if t.state == TrialState.COMPLETE and "AP" in t.user_attrs]
        if scored:
            best = max(scored, key=lambda t: t.user_attrs["AP"])
            parts.append(f"best AP {best.user_attrs['AP'] * 100:.1f} (#{best.number})")
        if self.fpn_ap is not None:
            parts.append(f"FPN {self.fpn_ap * 100:.1f}")
        if self.finished and self.remaining > 0:
            eta = (time.perf_counter() - self.start) / self.finished * self.remaining
            parts.append(f"ETA {eta / 60:.0f} min")
        return ", ".join(parts)
