"""Regularized (aging) evolution, Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search", as an Optuna sampler.

The population is the last ``population_size`` trials to finish with a reward (see
``nas.controllers.common``), in order of completion, so each new result pushes the oldest one out
-- age, not fitness, decides who dies. Until the population is full every decision is sampled
uniformly at random. After that each new trial is the child of one parent: ``sample_size``
members drawn at random without replacement, the one with the highest reward is the parent, and
the child copies the parent's decisions except exactly one, drawn uniformly among the parent's
decisions that have a choice, which gets a different value drawn uniformly. A conditional decision
the parent never made (it appears only because of the mutation) is sampled at random.

The population is read from the study's trials whenever a trial starts, so the sampler has no state
of its own: resuming a study, trials from another sampler and enqueued trials all just work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from nas.controllers.common import DecisionSampler, Reward, categorical, rewarded_trials, study_reward


@dataclass(frozen=True)
class _Plan:
    """How one child trial is made: its parent and the decision to mutate."""

    parent: FrozenTrial
    mutate: str | None  # None when the parent has no decision with more than one choice


class RegularizedEvolutionSampler(DecisionSampler):
    """Aging evolution over categorical define-by-run decisions.

    Args:
        population_size: P, the number of most recently finished trials that form the population.
            20 suits budgets of a few hundred trials (Real et al. used 100 for 20k).
        sample_size: S, the tournament size; larger is greedier.
        seed: seeds the random choices; runs are deterministic given it and the order of calls.
        reward: maps a finished trial to the reward to maximise (default: its objective value;
            required for multi-objective studies, e.g. a latency-weighted AP).
    """

    def __init__(
        self,
        population_size: int = 20,
        sample_size: int = 5,
        seed: int | None = None,
        reward: Reward | None = None,
    ) -> None:
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"need 1 <= sample_size ({sample_size}) <= population_size ({population_size})")
        self.population_size = population_size
        self.sample_size = sample_size
        self._reward = reward
        self._rng = np.random.RandomState(seed)
        self._plans: dict[int, _Plan | None] = {}  # by trial number; several trials may run at once

    def reseed_rng(self) -> None:
        self._rng.seed()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        population = rewarded_trials(study, study_reward(study, self._reward))[-self.population_size :]
        if len(population) < self.population_size:
            self._plans[trial.number] = None
            return
        drawn = self._rng.choice(len(population), self.sample_size, replace=False)
        parent = max((population[i] for i in drawn), key=lambda member: member[1])[0]
        mutable = [name for name, dist in parent.distributions.items() if not dist.single()]
        mutate = mutable[self._rng.randint(len(mutable))] if mutable else None
        self._plans[trial.number] = _Plan(parent, mutate)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        distribution = categorical(param_name, param_distribution, "evolution")
        plan = self._plans.get(trial.number)
        if plan is None or plan.parent.distributions.get(param_name) != distribution:
            return distribution.choices[self._rng.randint(len(distribution.choices))]
        inherited = plan.parent.params[param_name]
        if param_name != plan.mutate:
            return inherited
        return self._other_choice(distribution, inherited)

    def _other_choice(self, distribution: CategoricalDistribution, value: Any) -> Any:
        current = int(distribution.to_internal_repr(value))
        offset = 1 + self._rng.randint(len(distribution.choices) - 1)  # never 0: always a change
        return distribution.choices[(current + offset) % len(distribution.choices)]

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._plans.pop(trial.number, None)
