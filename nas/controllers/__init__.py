"""Controllers: the strategies that choose a search space's decisions, each an Optuna sampler.

Every controller drives every space (a space only calls ``trial.suggest_categorical``) and all
results land in one Optuna study:

- ``rl``: NAS-FPN's PPO-trained LSTM policy (``nas.controllers.rl.RLSampler``); its state lives
  in ``state_path``.
- ``evolution``: regularized (aging) evolution (``nas.controllers.evolution``); its state is the
  study itself.
- ``random``: Optuna's ``RandomSampler``, the strong baseline.
- ``tpe``: Optuna's ``TPESampler`` with Optuna 5's defaults: multivariate for single-objective
  studies, constant liar for trials that run concurrently.

Multi-objective studies (e.g. AP and latency): ``random`` and ``tpe`` handle them natively and
ignore ``reward``; ``rl`` and ``evolution`` need one number per trial and require ``reward``, a
function of the finished trial that scalarises the objectives (see ``nas.controllers.common``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import optuna

from nas.controllers.common import Reward, observed_value
from nas.controllers.evolution import RegularizedEvolutionSampler


@dataclass(frozen=True)
class Controller:
    """A controller: how its sampler is made, and whether it searches a Pareto front itself
    (``multi_objective``) or needs the objectives scalarised into one reward.

    ``make(seed, state_path, reward, **options)`` returns the Optuna sampler.
    """

    make: Callable[..., optuna.samplers.BaseSampler]
    multi_objective: bool


@runtime_checkable
class Finishing(Protocol):
    """A sampler with work left when a search stops (e.g. ``rl``'s last policy update and saved
    state); the search driver calls ``finish(study)`` once, after its last trial."""

    def finish(self, study: optuna.Study) -> None: ...


def _rl(
    seed: int | None, state_path: Any, reward: Reward | None, **options: Any
) -> optuna.samplers.BaseSampler:
    from nas.controllers.rl import RLSampler  # torch: the command line lists CONTROLLERS without it

    return RLSampler(seed=seed, state_path=state_path, reward=reward, **options)


def _evolution(
    seed: int | None, state_path: Any, reward: Reward | None, **options: Any
) -> optuna.samplers.BaseSampler:
    return RegularizedEvolutionSampler(seed=seed, reward=reward, **options)


def _random(
    seed: int | None, state_path: Any, reward: Reward | None, **options: Any
) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


def _tpe(
    seed: int | None, state_path: Any, reward: Reward | None, **options: Any
) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, **options)


CONTROLLERS: dict[str, Controller] = {
    "rl": Controller(_rl, multi_objective=False),
    "evolution": Controller(_evolution, multi_objective=False),
    "random": Controller(_random, multi_objective=True),
    "tpe": Controller(_tpe, multi_objective=True),
}

__all__ = [
    "CONTROLLERS",
    "Controller",
    "Finishing",
    "RegularizedEvolutionSampler",
    "Reward",
    "make_controller",
    "observed_value",
]


def make_controller(
    name: str,
    seed: int | None,
    state_path: str | os.PathLike[str] | None = None,
    reward: Reward | None = None,
    **options: Any,
) -> optuna.samplers.BaseSampler:
    """The controller ``name`` as an Optuna sampler.

    Args:
        name: a key of ``CONTROLLERS``.
        seed: seeds the controller's randomness.
        state_path: where ``rl`` keeps its state across resumes; the others keep none beyond the
            study and ignore it.
        reward: the reward ``rl`` and ``evolution`` maximise (default: the study's objective value);
            ignored by ``random`` and ``tpe``, which read the study's objective values.
        options: keyword arguments of the controller's class (e.g. ``batch`` for rl,
            ``population_size`` for evolution, ``n_startup_trials`` for tpe).
    """
    if name not in CONTROLLERS:
        raise ValueError(f"unknown controller {name!r}; known: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name].make(seed, state_path, reward, **options)
