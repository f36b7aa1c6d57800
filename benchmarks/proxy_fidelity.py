"""Does the proxy rank necks as the published results do?

    python benchmarks/proxy_fidelity.py [--seeds 3] [--long NECK,...] [--repeats NECK=K,...]
                                        [--results runs/fidelity.jsonl]

The reference is nobody's choice here:

- FPN's paper (Lin et al. 2017, Table 2, ResNet-50 Faster R-CNN on COCO): without the top-down
  path 24.9 AP (row e, "bottom-up pyramid"), FPN 33.9 (row c) -- a neck with no fusion ranks last;
- EfficientDet (Tan, Pang & Le 2020, Table 5, one backbone and head, necks repeated to similar
  cost): repeated FPN 42.29 < NAS-FPN 43.16 < FPN + PANet 44.08 < BiFPN 44.39.

So the reference order is ``nofusion < fpn < nasfpn < panet < bifpn`` (``REFERENCE``). Each neck
trains in the default proxy (RetinaNet's head with ATSS's sample selection on the frozen, cached,
scene-pretrained ResNet-10, embedded data) for ``--seeds`` seeds. Printed: per neck its repeats,
width, params and GFLOPs (at 512x512), AP mean ± std, AP per group of the data (context, shape,
detail), seconds; FPN minus no fusion with Welch's one-sided p; Kendall's tau_b of the mean-AP
ranking against the reference; tau_b of seed 0's ranking against seed 1's; and, for the necks in
``--long``, tau_b against a 4x budget (``full``) with the backbone trained in every trial -- the
long reference, a few necks at most on a CPU. ``--repeats NECK=K`` trains a neck at another depth
(EfficientDet compared necks at similar cost; a short proxy budget favours shallow ones).

Every finished training is appended to ``--results`` (JSON lines, keyed by the repeats, the data's
version, the pretraining's version and steps, and the proxy's default settings) and skipped when
the script runs again: an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from scipy.stats import kendalltau

from nas.cli import parse_repeats
from nas.data import synth
from nas.data.coco import CocoDetection
from nas.nets.backbone import backbone_widths
from nas.proxy.necks import resolve_neck
from nas.proxy.prepare import PRETRAIN_VERSION, prepare_proxy_data
from nas.proxy.pretrain import PRETRAIN_STEPS
from nas.proxy.profile import profile_neck
from nas.proxy.train import train_proxy
from nas.search.compare import welch_p
from nas.settings import ProxySettings

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = ("nofusion", "fpn", "nasfpn", "panet", "bifpn")  # worst to best, see the docstring
GROUPS = ("context", "shape", "detail")
VERSIONS = {
    "data": synth.VERSION,
    "pretrain": PRETRAIN_VERSION,
    "pretrain_steps": PRETRAIN_STEPS,
    # the default recipe (detector, learning rate, ...): records of another are not reused
    "proxy": {k: v for k, v in asdict(ProxySettings()).items() if k not in ("budget", "freeze_backbone")},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "shapes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--necks", default=",".join(REFERENCE), help="subset of the reference necks")
    parser.add_argument("--long", default="", help="necks also trained 4x longer with the backbone trainable")
    parser.add_argument(
        "--repeats",
        type=parse_repeats,
        default={},
        metavar="NECK=K,...",
        help="default: the paper's",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "fidelity.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache")
    args = parser.parse_args()
    necks = [n for n in REFERENCE if n in args.necks.split(",")]
    papers = {n: resolve_neck(n) for n in necks}
    specs = {n: replace(spec, repeats=args.repeats.get(n, spec.repeats)) for n, spec in papers.items()}
    long_necks = [n for n in necks if n in args.long.split(",")]

    base = ProxySettings()
    long_settings = replace(base, budget="full", freeze_backbone=False)
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            record = json.loads(line)
            neck = record["neck"]
            if record.get("versions") == VERSIONS and neck in specs:
                if record.get("repeats", papers[neck].repeats) == specs[neck].repeats:
                    done[(neck, record["budget"], record["seed"])] = record
    plan = [(n, base, s) for s in range(args.seeds) for n in necks] + [
        (n, long_settings, 0) for n in long_necks
    ]
    todo = [(n, settings, s) for n, settings, s in plan if (n, settings.budget, s) not in done]
    if todo:
        root = synth.synthesize(args.data)
        splits = CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val")
        data = prepare_proxy_data(*splits, base, args.cache_dir)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for k, (name, settings, seed) in enumerate(todo, 1):
            metrics = train_proxy(specs[name], data, settings, seed=seed, progress=False)
            record = {
                "neck": name,
                "repeats": specs[name].repeats,
                "budget": settings.budget,
                "seed": seed,
                "versions": VERSIONS,
                **metrics,
            }
            done[(name, settings.budget, seed)] = record
            with args.results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"[{k}/{len(todo)}] {name} {settings.budget} seed {seed}: AP {metrics['AP'] * 100:.2f} "
                + " ".join(f"{g} {metrics.get(f'AP_{g}', 0) * 100:.1f}" for g in GROUPS)
                + f" ({metrics['seconds']:.0f} s)",
                flush=True,
            )

    def ap(name: str, seed: int, budget: str = "default", metric: str = "AP") -> float:
        return done[(name, budget, seed)].get(metric, 0.0) * 100

    seeds = range(args.seeds)
    mean = {n: statistics.mean(ap(n, s) for s in seeds) for n in necks}
    std = {n: statistics.stdev([ap(n, s) for s in seeds]) if args.seeds > 1 else 0.0 for n in necks}
    widths = backbone_widths(base.backbone)
    print()
    print(
        f"| neck | repeats | width | params | GFLOPs | AP (mean ± std, {args.seeds} seeds) | "
        + " | ".join(f"AP {g}" for g in GROUPS)
        + " | s a trial |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(GROUPS) + "---|")
    for n in necks:
        spec = specs[n]
        cost = profile_neck(spec, widths, base.width, 512)
        groups = " | ".join(
            f"{statistics.mean(ap(n, s, metric=f'AP_{g}') for s in seeds):.1f}" for g in GROUPS
        )
        seconds = statistics.mean(done[(n, "default", s)]["seconds"] for s in seeds)
        print(
            f"| {n} | {spec.repeats} | {base.width} | {cost['params'] / 1e6:.2f}M "
            f"| {cost['flops'] / 1e9:.2f} | {mean[n]:.2f} ± {std[n]:.2f} | {groups} | {seconds:.0f} |"
        )
    print()
    if {"fpn", "nofusion"} <= set(necks):
        fpn, nofusion = [ap("fpn", s) for s in seeds], [ap("nofusion", s) for s in seeds]
        p = welch_p(fpn, nofusion)
        print(f"FPN - no fusion: {mean['fpn'] - mean['nofusion']:+.2f} AP, Welch one-sided p = {p:.4f}")
    for n in ("panet", "bifpn"):
        if n in necks and "fpn" in necks:
            print(f"{n} - FPN: {mean[n] - mean['fpn']:+.2f} AP")
    rank = [REFERENCE.index(n) for n in necks]
    tau = kendalltau(rank, [mean[n] for n in necks]).statistic
    print(f"Kendall tau_b against the reference order: {tau:.2f}")
    if args.seeds > 1:
        tau = kendalltau([ap(n, 0) for n in necks], [ap(n, 1) for n in necks]).statistic
        print(f"Kendall tau_b, seed 0 against seed 1: {tau:.2f}")
    print(f"largest seed std: {max(std.values()):.2f} AP")
    if len(long_necks) > 1:
        short = [mean[n] for n in long_necks]
        tau = kendalltau(short, [ap(n, 0, "full") for n in long_necks]).statistic
        print(
            f"Kendall tau_b against 4x budget with the backbone trained ({', '.join(long_necks)}): {tau:.2f}"
        )


if __name__ == "__main__":
    main()
