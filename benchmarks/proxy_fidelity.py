"""Does the proxy rank necks the way longer training does?

    python benchmarks/proxy_fidelity.py [--seeds 3] [--long-seeds 1] [--results runs/fidelity.jsonl]

Trains FPN, PANet, BiFPN, NAS-FPN and a degenerate neck with no cross-scale connections (each
level only its own lateral and 3x3 conv; P6/P7 max-pooled from C5) in the default proxy
(RetinaNet, frozen cached ResNet-10, embedded data): ``--seeds`` seeds at the default budget
and ``--long-seeds`` at the 4x longer ``full`` budget. Prints AP mean and seed std per neck,
FPN's margin over the degenerate neck, and the Kendall tau between the default-budget ranking
(by mean AP) and the long-budget ranking.

Every finished run is appended to ``--results`` (JSON lines) and skipped when the script is run
again, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import kendalltau

from nas.data.coco import CocoDetection
from nas.data.synth import synthesize
from nas.genotype import Genotype, Node
from nas.necks import NeckSpec, resolve_neck
from nas.proxy_data import prepare_proxy_data
from nas.settings import BUDGETS, ProxySettings
from nas.train import train_proxy

ROOT = Path(__file__).resolve().parents[1]

NECKS = ("fpn", "panet", "bifpn", "nasfpn", "degenerate")


def degenerate() -> NeckSpec:
    """Each level only its own lateral (the 1x1 width conv) and a 3x3 conv: no fusion at all."""
    nodes = [Node(level=level, inputs=(i,), post="conv") for i, level in enumerate((3, 4, 5, 6, 7))]
    extra = [Node(level=6, inputs=(2,)), Node(level=7, inputs=(3,))]
    return NeckSpec(Genotype.create(nodes, [5, 6, 7, 8, 9], extra, name="degenerate"), norm=None)


def neck_spec(name: str) -> NeckSpec:
    return degenerate() if name == "degenerate" else resolve_neck(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "shapes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--long-seeds", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "fidelity.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache")
    args = parser.parse_args()

    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            record = json.loads(line)
            done[(record["neck"], record["budget"], record["seed"])] = record
    plan = [(n, "default", s) for s in range(args.seeds) for n in NECKS]
    plan += [(n, "full", s) for s in range(args.long_seeds) for n in NECKS]
    todo = [key for key in plan if key not in done]
    if todo:
        root = synthesize(args.data)
        base = ProxySettings()
        data = prepare_proxy_data(
            CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val"), base, args.cache_dir
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for k, (name, budget, seed) in enumerate(todo, 1):
            settings = ProxySettings(budget=budget)
            metrics = train_proxy(neck_spec(name), data, settings, seed=seed, progress=False)
            record = {"neck": name, "budget": budget, "seed": seed, **metrics}
            done[(name, budget, seed)] = record
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"[{k}/{len(todo)}] {name} {budget} seed {seed}: AP {metrics['AP'] * 100:.2f} "
                f"({metrics['seconds']:.0f} s)",
                flush=True,
            )

    def aps(name: str, budget: str, seeds: int) -> list[float]:
        return [done[(name, budget, s)]["AP"] * 100 for s in range(seeds)]

    short = {n: aps(n, "default", args.seeds) for n in NECKS}
    long = {n: aps(n, "full", args.long_seeds) for n in NECKS}
    print()
    steps = BUDGETS["default"].steps, BUDGETS["full"].steps
    print(
        f"| neck | AP default ({steps[0]} steps), mean ± std over {args.seeds} seeds | seconds | "
        f"AP full ({steps[1]} steps), mean over {args.long_seeds} |"
    )
    print("|---|---|---|---|")
    for n in NECKS:
        std = statistics.stdev(short[n]) if len(short[n]) > 1 else 0.0
        seconds = statistics.mean(done[(n, "default", s)]["seconds"] for s in range(args.seeds))
        print(
            f"| {n} | {statistics.mean(short[n]):.2f} ± {std:.2f} | {seconds:.0f} "
            f"| {statistics.mean(long[n]):.2f} |"
        )
    margin = statistics.mean(short["fpn"]) - statistics.mean(short["degenerate"])
    worst_std = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in short.values())
    tau = kendalltau([statistics.mean(short[n]) for n in NECKS], [statistics.mean(long[n]) for n in NECKS])
    print()
    print(f"FPN - degenerate at the default budget: {margin:+.2f} AP (target >= 5)")
    print(f"largest seed std: {worst_std:.2f} AP (target <= 1)")
    print(f"Kendall tau, default vs 4x budget ranking: {tau.statistic:.2f} (target >= 0.6)")


if __name__ == "__main__":
    main()
