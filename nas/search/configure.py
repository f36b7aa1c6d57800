"""From what a user asks of ``nasfpn search`` to the ``SearchConfig`` it runs.

A new run's config is resolved once here (the space and its options, the objective and its cost
target, the data's paths, the trial resources) and saved; a resumed run reuses its saved config,
and only its execution (trials, workers, resources, scheduler) may change. Asking a resumed run
for other search-defining settings is a ``UsageError`` that names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import GenotypeError, UsageError
from nas.search.cluster import trial_resources
from nas.search.runs import COST_IMAGE_SIZE, RunFolder, SearchConfig
from nas.settings import ProxySettings

if TYPE_CHECKING:
    from nas.data.coco import CocoDetection
    from search_spaces.base import SearchSpace


@dataclass(frozen=True)
class SearchRequest:
    """The options a search was started or resumed with; None means not given: a new run's
    default, a resumed run's saved value."""

    name: str
    splits: Callable[[], tuple[CocoDetection, CocoDetection]]  # the data options' splits, read on call
    data_given: bool = False  # a data option was given (else: the embedded set)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    space: str | None = None
    space_options: dict[str, Any] | None = None
    controller: str | None = None
    seed: int | None = None
    objective: str | None = None  # "ap", "ap,latency" or "ap,flops"
    reward: str | None = None
    cost_target: float | None = None
    seed_with: str | None = None  # comma-separated neck names
    storage: str | None = None
    calibration: dict[str, str] = field(default_factory=dict)  # folder, budget: --budget calibrated
    # Execution: may change on resume.
    trials: int | None = None
    workers: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    scheduler: str = "asha"
    on_cluster: bool = False  # joins a Ray cluster: its GPUs need not be this machine's


# Each search-defining option, as its value reads in a saved config: changing one on resume would
# mix two searches in one study.
_SAVED_VALUE: dict[str, Callable[[SearchConfig], Any]] = {
    "space": lambda c: c.space,
    "space_options": lambda c: c.space_options,
    "controller": lambda c: c.controller,
    "seed": lambda c: c.seed,
    "objective": lambda c: "ap" if not c.objective.get("cost") else f"ap,{c.objective['cost']}",
    "reward": lambda c: c.objective.get("form"),
    "cost_target": lambda c: c.objective.get("target"),
    "seed_with": lambda c: ",".join(c.seed_with),
    "storage": lambda c: c.storage,
}


def search_config(run: RunFolder, request: SearchRequest) -> SearchConfig:
    """The config ``request`` runs in ``run``: its saved one when the folder exists, else a new one."""
    return resumed_config(run, request) if run.exists() else new_config(request)


def new_config(request: SearchRequest) -> SearchConfig:
    """A new search's config, every default resolved; UsageError for an impossible option."""
    from nas.search.objectives import Objective
    from search_spaces import get_space

    space_name = request.space or "nasfpn"
    options = request.space_options or {}
    try:
        space = get_space(space_name, **options)
    except ValueError as e:
        raise UsageError(f"--space {space_name}: {e}") from None
    controller = request.controller or "rl"
    try:
        objective = Objective.parse(
            request.objective or "ap", request.reward, controller, request.cost_target
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if objective.needs_target():
        assert objective.cost_key is not None  # a target is needed for a cost only
        objective = replace(objective, target=_fpn_cost(request.proxy, objective.cost_key))
    seed_with = tuple(n.strip() for n in (request.seed_with or "").split(",") if n.strip())
    for name in seed_with:
        _check_in_space(name, space, space_name)
    data = data_paths(*request.splits())
    workers, cpus, gpus = trial_resources(request.workers, request.cpus_per_trial, request.gpus_per_trial)
    if gpus > 0 and not request.on_cluster:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--gpus-per-trial {gpus}: this machine has no GPU")
    return SearchConfig(
        name=request.name,
        space=space_name,
        space_options=options,
        controller=controller,
        trials=request.trials or 20,
        seed=request.seed or 0,
        seed_with=seed_with,
        objective=objective.to_dict(),
        proxy=asdict(request.proxy),
        data=data,
        scheduler=request.scheduler,
        workers=workers,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        storage=request.storage,
        calibration=request.calibration,
    )


def resumed_config(run: RunFolder, request: SearchRequest) -> SearchConfig:
    """The saved config with the execution ``request`` asks for; UsageError when ``request``
    gives a search-defining option other than the saved one."""
    saved = run.load_config()
    given = [
        "--" + key.replace("_", "-")
        for key, saved_value in _SAVED_VALUE.items()
        if getattr(request, key) is not None and getattr(request, key) != saved_value(saved)
    ]
    # Proxy settings always have a value: only one other than both the default and the saved counts.
    requested, defaults = asdict(request.proxy), asdict(ProxySettings())
    given += [
        f"proxy {k}={requested[k]!r}"
        for k in requested
        if requested[k] != defaults[k] and requested[k] != saved.proxy.get(k)
    ]
    if request.data_given and data_paths(*request.splits()) != saved.data:
        given.append("the data options")
    if given:
        raise UsageError(
            f"{run.path} exists and was started with other settings ({', '.join(given)}): "
            f"resume without them, or start a new --name"
        )
    return replace(
        saved,
        trials=request.trials or saved.trials,
        workers=request.workers or saved.workers,
        cpus_per_trial=request.cpus_per_trial,
        gpus_per_trial=request.gpus_per_trial if request.gpus_per_trial is not None else saved.gpus_per_trial,
        scheduler=request.scheduler,
    )


def data_paths(train: CocoDetection, val: CocoDetection) -> dict[str, str]:
    """What a config records of its data: both splits' annotation files and image folders."""
    return {
        "train_json": str(Path(train.annotation_file).resolve()),
        "train_images": str(Path(train.images_dir).resolve()),
        "val_json": str(Path(val.annotation_file).resolve()),
        "val_images": str(Path(val.images_dir).resolve()),
    }


def _fpn_cost(settings: ProxySettings, cost_key: str) -> float:
    """FPN's cost on the proxy: the scalar reward's default target."""
    from nas.proxy.necks import resolve_neck
    from nas.search.trial import neck_costs

    return float(neck_costs(resolve_neck("fpn"), settings, COST_IMAGE_SIZE)[cost_key])


def _check_in_space(name: str, space: SearchSpace, space_name: str) -> None:
    """UsageError unless the neck ``name`` (--seed-with) is a point of ``space``."""
    from nas.proxy.necks import resolve_neck

    genotype = resolve_neck(name).genotype
    if genotype is None:
        raise UsageError(f"--seed-with {name}: a hand-written neck without a genotype, in no space")
    try:
        space.encode(genotype)
    except GenotypeError as e:
        raise UsageError(f"--seed-with {name}: not a point of the {space_name} space: {e}") from None
