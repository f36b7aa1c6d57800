"""Ray Tune's searcher over an Optuna study: the controller (an Optuna sampler) proposes, Tune runs.

Tune asks ``suggest``; the searcher asks the study for a trial (``study.ask()``, so enqueued
and rerun trials come first), lets the search space sample a genotype through it -- each
decision goes through the controller -- and hands Tune the genotype. Results come back through
``on_trial_result`` (intermediate AP) and ``on_trial_complete``, which records the metrics as
user attributes and tells the study COMPLETE, PRUNED (stopped early by the scheduler) or FAIL
(with the reason). Only this driver-side object writes to the study, so SQLite is safe.

Optuna's ``OptunaSearch`` for Tune does the ask/tell part, but keeps its trials private; here
the trial's genotype, costs and failure reason must land in the study too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from nas.proxy.evaluate import METRICS
from nas.search.objectives import Objective
from nas.search.runs import DRIVER, RunFolder, claimed
from search_spaces.base import SearchSpace

PLACEMENT = ("node", "gpus", "device", "started")  # where a trial ran (nas.search.trial), failed or not
RECORDED = (*METRICS, "params", "flops", "latency_ms", "seconds", "step", *PLACEMENT)


class StudySearcher(Searcher):
    """Proposes trials from ``study`` through ``space`` until it holds ``trials`` (counting
    those of other drivers sharing it); ``extra_configs`` (e.g. the FPN baseline) are handed out
    first and not recorded in the study."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        objective: Objective,
        run: RunFolder,
        trial_config: Callable[[dict[str, Any], str], dict[str, Any]],
        evaluations: int,
        trials: int,
        extra_configs: Sequence[dict[str, Any]] = (),
        on_finish: Callable[[Any, dict[str, Any], str], None] | None = None,
    ) -> None:
        super().__init__(metric="AP", mode="max")
        self.study = study
        self.space = space
        self.objective = objective
        self.run = run
        self.trial_config = trial_config
        self.evaluations = evaluations
        self.trials = trials
        self.extra_configs = list(extra_configs)
        self.on_finish = on_finish or (lambda number, result, state: None)
        self.live: dict[str, optuna.Trial] = {}  # Tune trial id -> the study's running trial
        self.extras: dict[str, Any] = {}  # Tune trial id -> an extra config's "number"

    # Ray's own searchers return its FINISHED sentinel, a str its annotation leaves out.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.extra_configs:
            config = self.extra_configs.pop(0)
            self.extras[trial_id] = config["number"]
            return config
        if claimed(self.study) >= self.trials:  # other drivers of a shared study took the rest
            return Searcher.FINISHED
        trial = self.study.ask()
        trial.set_user_attr("driver", DRIVER)
        genotype = self.space.sample(trial)
        trial.set_user_attr("genotype", genotype.to_dict())
        trial.set_user_attr("summary", self.space.summary(genotype))
        self.live[trial_id] = trial
        out_dir = self.run.trial_dir(trial.number)
        return {**self.trial_config(genotype.to_dict(), str(out_dir)), "number": trial.number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self.live.get(trial_id)
        # Intermediate values feed the dashboard; Optuna keeps them for single-objective studies only.
        if trial is not None and "failure" not in result and len(self.study.directions) == 1:
            trial.report(float(result["AP"]), step=int(result["evaluation"]))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        result = dict(result or {})
        if error and "failure" not in result:
            # Tune tells the searcher no more; a trial's own exceptions are reported as "failure".
            result["failure"] = (
                "the trial's worker died: its process or its Ray node was lost "
                "(out of memory, a crash or a machine gone; see the Ray logs)"
            )
        if trial_id in self.extras:
            self.on_finish(self.extras.pop(trial_id), result, "FAIL" if "failure" in result else "COMPLETE")
            return
        trial = self.live.pop(trial_id, None)
        if trial is None:
            return
        if "failure" in result:
            _record(trial, result, ("failure", *PLACEMENT))
            state = TrialState.FAIL
            self.study.tell(trial, state=state)
        else:
            _record(trial, result, RECORDED)
            if int(result["evaluation"]) < self.evaluations:
                state = TrialState.PRUNED  # stopped early by the scheduler
                self.study.tell(trial, state=state)
            else:
                state = TrialState.COMPLETE
                self.study.tell(trial, self.objective.values(result))
        self.on_finish(trial.number, result, state.name)

    # The study is the searcher's state: Tune's experiment checkpoints need nothing from it.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def _record(trial: optuna.Trial, result: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if key in result:
            trial.set_user_attr(key, result[key])
