"""Test helpers shared by several test modules."""

from __future__ import annotations

import json
import random
from collections.abc import Collection
from pathlib import Path

import optuna
from optuna.trial import TrialState
from torch import nn

from nas.search.objectives import Objective
from nas.search.runs import RunFolder, SearchConfig
from search_spaces import get_space


def copy_weights_in_order(src: nn.Module, dst: nn.Module) -> None:
    """Copies every parameter and buffer of ``src`` into ``dst``, matched by registration order.

    Hand-written necks, their genotype twins, torchvision's FPN and effdet's BiFPN all register
    per node: fusion weights, resampling, post op; a shape mismatch fails loudly.
    """
    src_items, dst_items = list(src.state_dict().items()), list(dst.state_dict().items())
    assert len(src_items) == len(dst_items), f"{len(src_items)} tensors vs {len(dst_items)}"
    state = {}
    for (src_key, value), (dst_key, target) in zip(src_items, dst_items):
        assert value.shape == target.shape, (
            f"{src_key} {tuple(value.shape)} vs {dst_key} {tuple(target.shape)}"
        )
        state[dst_key] = value
    dst.load_state_dict(state)


def randomize_norm_stats(module: nn.Module) -> None:
    """Gives BN layers non-trivial running stats and affine params, so eval outputs test them."""
    import torch

    generator = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def make_run(
    path: Path,
    trials: int = 4,
    *,
    pareto: bool = False,
    failed: Collection[int] = (),
    pruned: Collection[int] = (),
    running: Collection[int] = (),
    baseline: bool = True,
    seed: int = 0,
) -> RunFolder:
    """A run folder with a study of ``trials`` trials of the nasfpn space and made-up metrics;
    trials in ``failed``/``pruned``/``running`` end that way; FPN's baseline metrics if asked."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = RunFolder(path)
    objective = Objective(cost="latency", form="pareto") if pareto else Objective()
    config = SearchConfig(
        name=path.name,
        controller="random" if pareto else "rl",
        trials=trials,
        objective=objective.to_dict(),
    )
    run.save_config(config)
    # Made in memory, then copied into the run's SQLite file: one transaction per trial.
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        study_name=config.name,
        directions=objective.directions,
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    space = get_space(config.space)
    rng = random.Random(seed)
    for n in range(trials):
        trial = study.ask()
        genotype = space.sample(trial)
        trial.set_user_attr("genotype", genotype.to_dict())
        trial.set_user_attr("summary", space.summary(genotype))
        if n in running:
            continue
        if n in failed:
            trial.set_user_attr("failure", "RuntimeError: <b>loss</b> is NaN & 'quoted'")
            study.tell(trial, state=TrialState.FAIL)
            continue
        ap = 0.15 + 0.1 * rng.random() + 0.05 * n / max(trials, 1)
        metrics = _metrics(ap, rng)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        if not pareto:
            trial.report(ap * 0.7, step=1)
        if n in pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            if not pareto:
                trial.report(ap, step=2)
            study.tell(trial, objective.values(metrics))
    optuna.copy_study(from_study_name=config.name, from_storage=storage, to_storage=run.storage_url(config))
    if baseline:
        folder = run.baseline_dir("fpn")
        folder.mkdir(parents=True)
        metrics = _metrics(0.2, rng)
        costs = {k: metrics.pop(k) for k in ("params", "flops", "latency_ms")}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "costs": costs}))
    return run


def _metrics(ap: float, rng: random.Random) -> dict[str, float]:
    return {
        "AP": ap,
        "AP50": min(1.0, ap * 1.8),
        "AP75": ap * 0.9,
        "APs": ap * 0.5,
        "APm": ap * 1.1,
        "APl": min(1.0, ap * 1.4),
        "params": rng.randint(200_000, 900_000),
        "flops": rng.uniform(2e9, 9e9),
        "latency_ms": rng.uniform(20.0, 90.0),
        "seconds": rng.uniform(30.0, 90.0),
    }


def data_args(dataset: Path, checkpoint: Path, runs: Path) -> list[str]:
    """Options that train on the tests' tiny dataset: a 32-channel neck on random backbone
    weights (no pretraining), the feature cache under ``runs``."""
    return [
        "--data", str(dataset), "--width", "32",
        "--backbone-checkpoint", str(checkpoint), "--cache-dir", str(runs / "cache"),
    ]  # fmt: skip


def search_args(name: str, runs: Path, dataset: Path, checkpoint: Path, *extra: str) -> list[str]:
    """``nasfpn search`` arguments for run ``runs/name`` on the tests' tiny dataset (``data_args``)."""
    return ["search", "--name", name, "--runs-dir", str(runs), *data_args(dataset, checkpoint, runs), *extra]
