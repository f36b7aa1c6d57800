"""What Ray Tune + Optuna cost per trial, and what a second worker buys, on this machine.

Three runs of the same trials, side by side in one process (data prepared once, Ray started
once, both outside the timings):

1. direct -- the FPN baseline and the K genotypes a seeded random search proposes, each costed
   and trained by plain calls (``neck_costs`` + ``train_proxy``), one torch thread each, as a
   trial on a one-CPU worker runs;
2. tune x1 -- ``run_search`` with one worker: the same K trials plus the FPN baseline through Ray
   Tune, the searcher and the SQLite study;
3. tune x2 -- the same with two workers;
4. with ``--storage URL`` (e.g. a PostgreSQL server's ``postgresql://...``): tune x1 again with
   its study there, heartbeats on, as several drivers would share it; and, since whole searches
   differ by more than a storage's cost from run to run, the driver's own study calls timed
   alone -- the searcher's suggest, two results and completion, on 30 made-up trials -- in
   SQLite and in that storage.

Overhead per trial = (tune x1 wall - direct wall) / direct wall (target <= 5% at the default
budget); throughput gain = tune x1 wall / tune x2 wall (target >= 1.7x on 2 cores); the storage's
cost = (its study seconds a trial - SQLite's) / a direct trial's seconds (target <= 5%).

    python benchmarks/search_overhead.py [--trials 3] [--budget default] [--storage URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import ray
import torch

from nas.cli import DEFAULT_DATA
from nas.data.coco import CocoDetection
from nas.data.synth import synthesize
from nas.genotype import Genotype
from nas.proxy.evaluate import METRICS
from nas.proxy.necks import NeckSpec, resolve_neck
from nas.proxy.prepare import prepare_proxy_data
from nas.proxy.train import train_proxy
from nas.search.driver import run_search
from nas.search.objectives import Objective
from nas.search.runs import COST_IMAGE_SIZE, RunFolder, SearchConfig, open_storage
from nas.search.searcher import StudySearcher
from nas.search.trial import neck_costs
from nas.settings import ProxySettings
from search_spaces import get_space


def _search(root: Path, name: str, config: SearchConfig, data) -> tuple[float, list[Genotype]]:
    start = time.perf_counter()
    outcome = run_search(replace(config, name=name), RunFolder(root / name), data=data, out=lambda line: None)
    wall = time.perf_counter() - start
    assert outcome.finished and outcome.failed == 0, f"{name}: {outcome}"
    study = RunFolder(root / name).load_study()
    return wall, [Genotype.from_dict(t.user_attrs["genotype"]) for t in study.trials]


def study_seconds(url: str, space, root: Path, trials: int = 30) -> float:
    """The driver's seconds a trial in the study at ``url``: StudySearcher's own calls for a
    trial (suggest, two evaluations' results, completion) on made-up results, no training."""
    study = optuna.create_study(
        storage=open_storage(url), study_name=f"calls-{time.time()}", direction="maximize"
    )
    searcher = StudySearcher(
        study, space, Objective(), RunFolder(root), lambda genotype, out_dir: {}, 2, trials
    )
    result = {**dict.fromkeys(METRICS, 0.5), "params": 1e5, "flops": 1e8, "latency_ms": 9.0, "seconds": 90.0}
    result |= {"step": 500, "node": "n" * 56, "gpus": "", "device": "cpu", "started": time.time()}
    start = time.perf_counter()
    for k in range(trials):
        searcher.suggest(str(k))
        searcher.on_trial_result(str(k), {**result, "evaluation": 1})
        searcher.on_trial_complete(str(k), {**result, "evaluation": 2})
    return (time.perf_counter() - start) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--budget", default="default")
    parser.add_argument("--storage", help="a shared Optuna storage to time against SQLite")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    root = synthesize(DEFAULT_DATA)
    train, val = CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val")
    settings = ProxySettings(budget=args.budget)
    data = prepare_proxy_data(train, val, settings)
    space = get_space("nasfpn")
    config = SearchConfig(
        name="",
        controller="random",
        trials=args.trials,
        proxy=asdict(settings),
        data={
            "train_json": str(train.annotation_file),
            "train_images": str(train.images_dir),
            "val_json": str(val.annotation_file),
            "val_images": str(val.images_dir),
        },
        scheduler="none",
        workers=1,
    )
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root_dir = Path(tmp)
        tune_one, genotypes = _search(root_dir, "x1", config, data)

        torch.set_num_threads(1)  # as a trial on a one-CPU worker
        start = time.perf_counter()
        necks = [resolve_neck("fpn")] + [NeckSpec(g, space.repeats, space.norm) for g in genotypes]
        for k, neck in enumerate(necks):
            neck_costs(neck, settings, COST_IMAGE_SIZE)
            train_proxy(neck, data, settings, seed=0, out_dir=root_dir / f"direct-{k}", progress=False)
        direct = time.perf_counter() - start
        torch.set_num_threads(2)

        tune_two, again = _search(root_dir, "x2", replace(config, workers=2), data)
        assert [g.nodes for g in again] == [g.nodes for g in genotypes], "the seeded search changed"
        if args.storage:  # its own study name: a rerun of the benchmark must not resume the last
            shared = replace(config, storage=args.storage)
            tune_shared, _ = _search(root_dir, f"x1-{int(time.time())}", shared, data)
            sqlite_calls = study_seconds(f"sqlite:///{root_dir / 'calls.db'}", space, root_dir / "calls")
            shared_calls = study_seconds(args.storage, space, root_dir / "calls")
    ray.shutdown()

    n = len(necks)
    print(
        f"{n} trials each (FPN baseline + {args.trials} nasfpn cells), budget {args.budget}, one CPU a trial"
    )
    print(f"{'run':<10} {'wall s':>8} {'s/trial':>8}")
    runs = [("direct", direct), ("tune x1", tune_one), ("tune x2", tune_two)]
    if args.storage:
        runs.append(("tune x1, " + args.storage.split(":")[0], tune_shared))
    for name, wall in runs:
        print(f"{name:<10} {wall:8.1f} {wall / n:8.1f}")
    overhead = (tune_one - direct) / direct
    print(f"overhead of Ray Tune + Optuna per trial: {overhead * 100:+.1f}% (target <= 5%)")
    print(f"throughput, 2 workers vs 1: {tune_one / tune_two:.2f}x (target >= 1.7x)")
    if args.storage:
        name = runs[-1][0].removeprefix("tune x1, ")
        print(
            f"study calls a trial: SQLite {sqlite_calls * 1000:.0f} ms, {name} {shared_calls * 1000:.0f} ms"
        )
        extra = (shared_calls - sqlite_calls) / (direct / n)
        print(f"{name} vs SQLite, per trial: {extra * 100:+.2f}% of a direct trial (target <= 5%)")


if __name__ == "__main__":
    main()
