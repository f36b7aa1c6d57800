"""Controllers as Optuna samplers: valid proposals, evolution's mutation and aging, rl's learning and
resume, enqueued trials, rewards of pruned and failed trials."""

from __future__ import annotations

import statistics

import optuna
import pytest
import torch
from optuna.trial import TrialState

from nas.controllers import CONTROLLERS, RegularizedEvolutionSampler, make_controller
from nas.controllers.common import rewarded_trials, study_reward
from nas.controllers.rl import RLSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPS = ["sum", "attention", "weighted"]
LEVELS = [3, 4, 5]


def small_space(trial: optuna.Trial) -> dict:
    """A define-by-run space like a neck's: string and int choices, one conditional decision."""
    params = {f"op{i}": trial.suggest_categorical(f"op{i}", OPS) for i in range(3)}
    params["level"] = trial.suggest_categorical("level", LEVELS)
    if params["level"] == 5:
        params["extra"] = trial.suggest_categorical("extra", [0, 1])
    return params


def small_value(params: dict) -> float:
    return (
        sum(OPS.index(params[f"op{i}"]) * (i + 1) for i in range(3))
        + params["level"]
        + params.get("extra", 0)
    )


def grid_space(trial: optuna.Trial, decisions: int = 6, choices: int = 5) -> list[int]:
    return [trial.suggest_categorical(f"d{i}", list(range(choices))) for i in range(decisions)]


def hamming(a: dict, b: dict) -> int:
    return sum(a.get(k) != b.get(k) for k in a.keys() | b.keys())


def sqlite_study(tmp_path, sampler, direction: str = "maximize") -> optuna.Study:
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        study_name="s",
        sampler=sampler,
        direction=direction,
        load_if_exists=True,
    )


@pytest.mark.parametrize("name", CONTROLLERS)
def test_controller_runs_concurrent_trials_on_sqlite(tmp_path, name):
    options = {"evolution": {"population_size": 6, "sample_size": 3}}.get(name, {})
    study = sqlite_study(tmp_path, make_controller(name, seed=0, state_path=tmp_path / "rl.pt", **options))
    for _ in range(8):  # three trials in flight at a time, told out of order, as the Ray driver does
        trials = [study.ask() for _ in range(3)]
        spaces = [small_space(trial) for trial in trials]
        for trial, params in reversed(list(zip(trials, spaces))):
            study.tell(trial, small_value(params))
    assert len(study.trials) == 24
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert all(trial.params[f"op{i}"] in OPS for i in range(3))
        assert trial.params["level"] in LEVELS
        assert ("extra" in trial.params) == (trial.params["level"] == 5)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) > 3  # not stuck on one proposal


def test_unknown_controller_names_the_known_ones():
    with pytest.raises(ValueError, match="rl, evolution, random, tpe"):
        make_controller("bayes", seed=0)


def test_evolution_child_is_one_mutation_of_a_member_of_the_population():
    population, sample = 8, 3
    sampler = RegularizedEvolutionSampler(population_size=population, sample_size=sample, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: float(sum(grid_space(t))), n_trials=40)
    trials = study.trials
    for child in trials[population:]:
        window = trials[child.number - population : child.number]  # sequential: finished = earlier numbers
        assert any(hamming(child.params, member.params) == 1 for member in window), child.number


def test_evolution_population_ages_out_its_best_member():
    # Tournament = whole population, so the parent is the best of exactly the last P trials.
    population = 4
    sampler = RegularizedEvolutionSampler(population_size=population, sample_size=population, seed=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({f"d{i}": 0 for i in range(6)})

    def objective(trial: optuna.Trial) -> float:
        values = grid_space(trial)
        return 100.0 if trial.number == 0 else float(sum(v * (i + 1) for i, v in enumerate(values)))

    study.optimize(objective, n_trials=30)
    trials = study.trials
    assert hamming(trials[population].params, trials[0].params) == 1  # the champion is a parent...
    for child in trials[population + 1 :]:  # ...until it is older than the last P: then it is gone
        window = trials[child.number - population : child.number]
        best = max(t.value for t in window)
        assert any(hamming(child.params, t.params) == 1 for t in window if t.value == best), child.number


def test_evolution_is_deterministic_given_a_seed():
    def run() -> list[dict]:
        study = optuna.create_study(sampler=RegularizedEvolutionSampler(population_size=5, seed=3))
        study.optimize(lambda t: float(sum(grid_space(t))), n_trials=20)
        return [t.params for t in study.trials]

    assert run() == run()


def test_rl_learns_a_trivial_objective():
    sampler = RLSampler(seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: float(sum(v == 0 for v in grid_space(t, 4, 4))), n_trials=80)
    last = statistics.mean(t.value for t in study.trials[-20:])
    # Random search averages 1.0 here; the mean of 20 has a standard deviation of about 0.19.
    assert last > 2.0, last
    assert sampler.updates == 19


def test_rl_state_round_trips_and_resumes(tmp_path):
    path = tmp_path / "rl.pt"
    first = RLSampler(seed=0, state_path=path, batch=4)
    study = sqlite_study(tmp_path, first)
    study.optimize(lambda t: float(small_value(small_space(t))), n_trials=12)
    assert first.updates == 2  # trials 0-7; 8-11 wait for the next trial to start

    second = RLSampler(seed=99, state_path=path, batch=4)  # the file wins over the seed
    assert second.updates == 2 and second.baseline == first.baseline and second.deviation == first.deviation
    saved, restored = first.policy.state_dict(), second.policy.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)

    resumed = sqlite_study(tmp_path, second)
    resumed.optimize(lambda t: float(small_value(small_space(t))), n_trials=1)
    assert second.updates == 3  # caught up on trials 8-11, finished before the resume
    assert RLSampler(state_path=path).updates == 3


def test_rl_rejects_a_decision_whose_choices_change():
    study = optuna.create_study(sampler=RLSampler(seed=0))
    study.optimize(lambda t: float(t.suggest_categorical("x", [0, 1])), n_trials=1)
    with pytest.raises(ValueError, match="'x' changed its choices"):
        study.optimize(lambda t: float(t.suggest_categorical("x", [0, 1, 2])), n_trials=1)


@pytest.mark.parametrize("name", ["rl", "evolution"])
def test_enqueued_trials_are_kept_and_learned_from(name):
    options = {"rl": {"batch": 4}, "evolution": {"population_size": 4, "sample_size": 4}}[name]
    sampler = make_controller(name, seed=0, **options)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seeds = [{f"d{i}": 4 * (n % 2) for i in range(6)} for n in range(3)]
    for params in seeds:
        study.enqueue_trial(params)
    study.enqueue_trial({"d0": 4})  # partial: the controller fills in the rest
    study.optimize(lambda t: float(sum(grid_space(t))), n_trials=6)
    trials = study.trials
    assert [t.params for t in trials[:3]] == seeds
    assert trials[3].params["d0"] == 4 and set(trials[3].params) == {f"d{i}" for i in range(6)}
    if name == "rl":
        assert sampler.updates == 1  # from the four enqueued trials, at the start of trial 4
    else:
        best = max(trials[:4], key=lambda t: t.value)
        assert hamming(trials[4].params, best.params) == 1


def test_rewards_of_pruned_failed_and_minimised_trials():
    study = optuna.create_study(direction="minimize")
    for state, steps in [
        (TrialState.COMPLETE, {}),
        (TrialState.PRUNED, {0: 5.0, 3: 2.0}),
        (TrialState.PRUNED, {}),
    ]:
        trial = study.ask()
        for step, value in steps.items():
            trial.report(value, step)
        study.tell(trial, 7.0 if state == TrialState.COMPLETE else None, state=state)
    study.tell(study.ask(), state=TrialState.FAIL)
    rewards = [(t.number, r) for t, r in rewarded_trials(study, study_reward(study, None))]
    assert rewards == [(0, -7.0), (1, -2.0)]  # pruned: last intermediate value; failed: ignored


def test_multi_objective_needs_a_reward():
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=RegularizedEvolutionSampler(seed=0)
    )
    with pytest.raises(ValueError, match="pass reward="):
        study.optimize(lambda t: (float(sum(grid_space(t))), 1.0), n_trials=1)

    sampler = RegularizedEvolutionSampler(
        population_size=4, sample_size=2, seed=0, reward=lambda t: t.values[0]
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (float(sum(grid_space(t))), 1.0), n_trials=8)
    assert len(study.trials) == 8
