"""The search driver: a controller proposes genotypes, Ray Tune trains them, Optuna records them.

``run_search`` prepares the proxy data once (it is put in Ray's object store and shared by the
trials on a machine), opens the run's study, reruns trials a killed search left behind, trains
the FPN baseline on the same proxy once, and runs the remaining trials on Ray Tune with
``workers`` at a time and, by default, ASHA early stopping on the intermediate AP. Ctrl-C stops
cleanly: finished trials are in the study; running ones are rerun by the next
``nasfpn search --name NAME``.
"""

from __future__ import annotations

import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from nas.controllers import Finishing, make_controller
from nas.data.coco import CocoDetection
from nas.proxy.data import ProxyData
from nas.proxy.necks import NeckSpec, resolve_neck
from nas.proxy.prepare import prepare_proxy_data
from nas.search.cluster import SharedObject, ray_cluster
from nas.search.live_view import LiveView
from nas.search.objectives import Objective
from nas.search.runs import (
    COST_IMAGE_SIZE,
    DRIVER,
    RunFolder,
    SearchConfig,
    claimed,
    count_done,
    interrupted_numbers,
    open_storage,
    requeue_interrupted,
)
from nas.search.searcher import StudySearcher
from nas.settings import budget_of
from search_spaces import get_space

Print = Callable[[str], None]


@dataclass(frozen=True)
class SearchOutcome:
    done: int
    failed: int
    finished: bool  # the study reached its trial count (False: stopped early, e.g. Ctrl-C)
    seconds: float
    elsewhere: int = 0  # trials other drivers of a shared study are still running


def load_splits(config: SearchConfig) -> tuple[CocoDetection, CocoDetection]:
    data = config.data
    return (
        CocoDetection(data["train_json"], data["train_images"]),
        CocoDetection(data["val_json"], data["val_images"]),
    )


def run_search(
    config: SearchConfig,
    run: RunFolder,
    data: ProxyData | None = None,
    address: str | None = None,
    cache_dir: str | Path = "runs/cache",
    out: Print = print,
) -> SearchOutcome:
    """Runs (or resumes) the search ``config`` in ``run``; ``data`` skips the data preparation."""
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = RunFolder(run.path.resolve())  # trials run in Ray's working folders: paths must be absolute
    space = get_space(config.space, **config.space_options)
    objective = Objective(**config.objective)
    settings = config.proxy_settings
    run.save_config(config)

    storage = open_storage(run.storage_url(config))
    study = run.open_study(config, objective.directions, storage=storage)
    # Seeded by the trial count, so a resumed random/tpe search does not replay its first proposals;
    # and by the driver where several share the study, so that they do not propose the same ones.
    seed = (
        config.seed
        + len(study.trials)
        + (zlib.crc32(DRIVER.encode()) if storage.get_heartbeat_interval() else 0)
    )
    study.sampler = make_controller(config.controller, seed=seed, state_path=str(run.controller_state))
    rerun = requeue_interrupted(study)
    if not study.trials:
        for name in config.seed_with:
            genotype = resolve_neck(name).genotype
            assert genotype is not None, "the config's seed_with necks were checked to be in the space"
            study.enqueue_trial(space.encode(genotype), user_attrs={"seeded": name})
    remaining = config.trials - count_done(study)
    if rerun:
        out(f"resuming {run.path}: {rerun} interrupted trial(s) will be rerun")
    if remaining <= 0:
        out(f"{run.path}: all {config.trials} trials are done")
        return SearchOutcome(count_done(study), _failed(study), True, 0.0)

    if data is None:
        data = prepare_proxy_data(*load_splits(config), settings, cache_dir)

    def trial_config(
        genotype: dict[str, Any], out_dir: str, repeats: int, norm: str | None
    ) -> dict[str, Any]:
        return {
            "genotype": genotype,
            "repeats": repeats,
            "norm": norm,
            "seed": config.seed,
            "out_dir": out_dir,
            "threads": max(1, int(config.cpus_per_trial)),
            "cost_image_size": COST_IMAGE_SIZE,
        }

    baseline = [] if run.baseline_metrics() is not None else [_baseline_config(run, trial_config)]
    budget = budget_of(settings.budget)
    view = LiveView(study, config.trials, remaining, config.workers, out, config.gpus_per_trial)
    searcher = StudySearcher(
        study,
        space,
        objective,
        run,
        lambda genotype, out_dir: trial_config(genotype, out_dir, space.repeats, space.norm),
        budget.evaluations,
        config.trials,
        extra_configs=baseline,
        on_finish=view.trial_finished,
    )
    out(
        f"search {config.name}: space {config.space}, controller {config.controller}, "
        f"objective {objective.name}{f' ({objective.form})' if objective.cost else ''}; "
        f"{remaining} of {config.trials} trials to run, "
        f"{config.workers} at a time; proxy {settings.detector}/{settings.backbone}, budget {settings.budget}"
    )
    with _heartbeats(storage, searcher.live):
        _tune(config, run, searcher, data, remaining + len(baseline), budget.evaluations, address)
    requeue_interrupted(study, DRIVER)  # its trials still running were stopped: rerun them next time
    if isinstance(study.sampler, Finishing):
        study.sampler.finish(study)
    done = count_done(study)
    elsewhere = claimed(study) - done
    seconds = round(time.perf_counter() - start, 1)
    return SearchOutcome(done, _failed(study), done + elsewhere >= config.trials, seconds, elsewhere)


def _baseline_config(run: RunFolder, trial_config: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    fpn: NeckSpec = resolve_neck("fpn")
    assert fpn.genotype is not None  # FPN is a genotype neck
    return {
        **trial_config(fpn.genotype.to_dict(), str(run.baseline_dir()), fpn.repeats, fpn.norm),
        "number": "fpn",
    }


@contextmanager
def _heartbeats(storage: optuna.storages.RDBStorage, live: dict[str, optuna.Trial]) -> Iterator[None]:
    """Records a heartbeat for each trial in ``live`` as it starts and every interval after, where
    ``storage`` keeps them (a study other drivers may share: ``nas.search.runs``)."""
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()
    last: dict[int, float] = {}  # the storage's trial id -> when its last heartbeat was recorded

    def beat() -> None:
        while not stop.wait(1.0):  # a new trial gets its first heartbeat within a second
            for trial in list(live.values()):
                trial_id = trial._trial_id  # Optuna's heartbeats are keyed by the storage's own id
                if time.monotonic() - last.get(trial_id, -math.inf) < interval:
                    continue
                try:
                    storage.record_heartbeat(trial_id)
                    last[trial_id] = time.monotonic()
                except SQLAlchemyError:
                    pass  # the database is away a moment: the next beat may reach it

    thread = threading.Thread(target=beat, name="heartbeats", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _failed(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    interrupted = interrupted_numbers(trials)
    return sum(t.state == TrialState.FAIL and t.number not in interrupted for t in trials)


def _tune(
    config: SearchConfig,
    run: RunFolder,
    searcher: StudySearcher,
    data: ProxyData,
    samples: int,
    evaluations: int,
    address: str | None,
) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from nas.search.artifacts import folder_writer
    from nas.search.trial import run_trial

    # Tune's newer console output prints its own experiment box and paths even at verbose=0;
    # the live view is the user's progress display.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with ray_cluster(address):
        scheduler = (
            ASHAScheduler(
                time_attr="evaluation",
                metric="AP",
                mode="max",
                max_t=evaluations,
                reduction_factor=2,
                # A trial that reaches the last evaluation runs on to write its metrics and checkpoint.
                stop_last_trials=False,
            )
            if config.scheduler == "asha" and evaluations > 1
            else FIFOScheduler()
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial, data=SharedObject(data), settings=config.proxy_settings, folders=folder_writer()
            ),
            {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=samples,
                max_concurrent_trials=config.workers,
                # A worker process keeps torch imported and the data fetched for its next trial.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(run.path.resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
