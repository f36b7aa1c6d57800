"""What the learning controllers share: the reward of a trial and the decisions they accept.

A reward is a float to *maximise*. By default it is the trial's objective value (negated for a
minimised study): the final value of a COMPLETE trial, the last reported intermediate value of a
PRUNED one. FAIL trials, and PRUNED ones that reported nothing, have no reward and are ignored,
as Optuna's own samplers regard failed trials as deleted. A failure caused by the architecture
(e.g. out of memory) should therefore be told as a COMPLETE trial with a low value if the
controller is meant to avoid it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

Reward = Callable[[FrozenTrial], float | None]
"""Maps a COMPLETE or PRUNED trial to the reward to maximise; None leaves the trial out."""


def observed_value(trial: FrozenTrial) -> float | None:
    """The trial's value if it completed, its last intermediate value if it was pruned, else None.

    Meant for custom rewards too, e.g. ``lambda t: observed_value(t) * (ms(t) / target) ** w``.
    """
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def study_reward(study: optuna.Study, reward: Reward | None) -> Reward:
    """``reward`` if given, else the study's single objective value turned into a reward."""
    if reward is not None:
        return reward
    if len(study.directions) > 1:
        raise ValueError(
            "rl and evolution need one reward per trial: for a multi-objective study pass "
            "reward=<callable(FrozenTrial) -> float> that scalarises the objectives"
        )
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0

    def value_reward(trial: FrozenTrial) -> float | None:
        value = observed_value(trial)
        return None if value is None else sign * value

    return value_reward


def rewarded_trials(study: optuna.Study, reward: Reward) -> list[tuple[FrozenTrial, float]]:
    """Finished trials that have a finite reward, with it, oldest completion first."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    # Completion order, not trial number: with concurrent trials a later number may finish first.
    trials.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
    rewarded = []
    for trial in trials:
        value = reward(trial)
        if value is not None and math.isfinite(value):
            rewarded.append((trial, float(value)))
    return rewarded


def categorical(name: str, distribution: BaseDistribution, controller: str) -> CategoricalDistribution:
    """``distribution`` if it is categorical; a search space's decisions always are."""
    if not isinstance(distribution, CategoricalDistribution):
        raise ValueError(
            f"{controller} controller: decision {name!r} is {type(distribution).__name__}, "
            "but only categorical decisions (trial.suggest_categorical) are supported"
        )
    return distribution


class DecisionSampler(BaseSampler):
    """A sampler that takes a space's decisions one at a time (``sample_independent``): define-by-run
    spaces have no joint search space to sample relative to."""

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}
