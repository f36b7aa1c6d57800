"""CPU latency of an exported ``neck.py`` against the builder's module it was generated from.

What it measures: for each neck, the wall-clock time of one forward pass (eval mode,
``torch.inference_mode``) of

- ``nas.nets.builder.GenotypeNeck`` (what search, training and compare run), and
- the ``Neck`` of the ``neck.py`` that ``nasfpn export`` writes for it (``nas.export.codegen``),

with the same weights (the builder's state_dict loaded into the exported module; the outputs
are checked to be equal before timing). Target: exported <= 1.0 x builder.

Setting: a 512x512 image, ResNet-50's C3..C5 (512/1024/2048 channels at 64x64, 32x32, 16x16),
256 channels, batch 1 and 2; necks nasfpn (7 repeats, BN), bifpn (3 repeats, BN), fpn, panet
(no norm, 1 repeat) and a searched-like cell: a random sample of the nasfpn search space,
built as a search builds it (the space's repeats and norm).

How: one thread by default (``--threads``; the machine this was written on has two cores that
other jobs share, and a second thread waiting on a busy core makes small ops erratic); every
module warmed up, then ``--rounds`` rounds; each round times every (neck, batch) group once,
the group's two modules back to back in alternating order. Reported: the median over rounds
of each module's time, and the median of the per-round paired ratios exported/builder, which
cancels most drift of background load, with a 95% distribution-free interval for that median
(order statistics of the ratios); last, the same over the ratios of all rows. The two modules
run the same ops, so the honest answer is "1.0 within the noise"; the verdict says which:
``ok`` (median <= 1.0), ``noise`` (median above 1.0, but the interval reaches 1.0: no
measurable overhead) or ``over`` (the whole interval above 1.0: a real overhead).

Run (about five minutes on one idle thread)::

    PYTHONPATH=. .venv/bin/python benchmarks/export_latency.py
    PYTHONPATH=. .venv/bin/python benchmarks/export_latency.py --quick     # smoke run, seconds
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from torch import Tensor, nn

from fixed_necks import FIXED_NECKS
from nas.export.codegen import BuildSettings, Facts, generate
from nas.genotype import Genotype
from nas.nets.builder import GenotypeNeck
from search_spaces import get_space

TARGET = 1.0
RESNET50 = (512, 1024, 2048)


@dataclass
class Group:
    """One (neck, batch): the builder's module, the exported one, their inputs and timings."""

    neck: str
    repeats: int
    batch: int
    params: int
    builder: nn.Module
    exported: nn.Module
    inputs: list[Tensor]
    builder_ms: list[float] = field(default_factory=list)
    exported_ms: list[float] = field(default_factory=list)

    def time_once(self, exported_first: bool) -> None:
        order = [(self.exported, self.exported_ms), (self.builder, self.builder_ms)]
        for module, times in order if exported_first else order[::-1]:
            start = time.perf_counter()
            module(self.inputs)
            times.append((time.perf_counter() - start) * 1e3)


def searched_like(seed: int) -> tuple[Genotype, int, str | None]:
    space = get_space("nasfpn")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.sample(study.ask()), space.repeats, space.norm


def exported_module(genotype: Genotype, build: BuildSettings, folder: Path, name: str) -> nn.Module:
    source = generate(genotype, build, Facts(params=0, flops=0, image_size=512))
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"exported_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Neck()


def make_groups(args: argparse.Namespace, folder: Path) -> list[Group]:
    necks = [
        ("nasfpn", FIXED_NECKS["nasfpn"].genotype, args.nasfpn_repeats, "bn"),
        ("bifpn", FIXED_NECKS["bifpn"].genotype, 3, "bn"),
        ("fpn", FIXED_NECKS["fpn"].genotype, 1, None),
        ("panet", FIXED_NECKS["panet"].genotype, 1, None),
        (f"searched-like (nasfpn space, seed {args.seed})", *searched_like(args.seed)),
    ]
    groups = []
    generator = torch.Generator().manual_seed(0)
    for k, (name, genotype, repeats, norm) in enumerate(necks):
        build = BuildSettings(RESNET50, args.channels, repeats, norm)
        builder = GenotypeNeck(genotype, build.in_channels, build.channels, repeats, norm).eval()
        exported = exported_module(genotype, build, folder, f"neck{k}").eval()
        exported.load_state_dict(builder.state_dict())
        params = sum(p.numel() for p in builder.parameters())
        for batch in args.batches:
            sides = [-(-args.image // s) for s in (8, 16, 32)]
            inputs = [torch.randn(batch, c, s, s, generator=generator) for c, s in zip(RESNET50, sides)]
            groups.append(Group(name, repeats, batch, params, builder, exported, inputs))
        with torch.inference_mode():
            a, b = builder(groups[-1].inputs), exported(groups[-1].inputs)
        if list(a) != list(b) or not all(torch.equal(a[key], b[key]) for key in a):
            print(
                f"WARNING: {name}: the exported module's outputs differ from the builder's", file=sys.stderr
            )
    return groups


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the k-th smallest and the k-th largest value,
    k the largest with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2 (at least 1)."""
    n, ordered = len(values), sorted(values)
    k, tail = 0, 0.0
    while k < n // 2:
        tail += math.comb(n, k) / 2**n  # now P(Binomial(n, 1/2) <= k)
        if tail > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def verdict(ratios: list[float]) -> tuple[float, tuple[float, float], str]:
    ratio, (low, high) = statistics.median(ratios), median_interval(ratios)
    return ratio, (low, high), "ok" if ratio <= TARGET else "noise" if low <= TARGET else "over"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=int, default=512)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--nasfpn-repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0, help="which sample of the nasfpn space")
    parser.add_argument("--quick", action="store_true", help="128x128, 64 channels, 3 rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.image, args.channels, args.rounds, args.nasfpn_repeats = 128, 64, 3, 2
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        groups = make_groups(args, Path(folder))
        for _ in range(args.warmup):
            for g in groups:
                g.time_once(exported_first=False)
        for g in groups:
            g.builder_ms.clear()
            g.exported_ms.clear()
        gc.collect()
        gc.disable()
        try:
            for r in range(args.rounds):
                for g in groups:
                    g.time_once(exported_first=r % 2 == 0)
        finally:
            gc.enable()

    print(
        f"exported neck.py vs nas.nets.builder.GenotypeNeck: CPU, {args.threads} thread(s), eval, "
        "inference_mode; "
        f"{args.image}x{args.image} image, C3..C5 widths {RESNET50}, {args.channels} channels; "
        f"median of {args.rounds} interleaved rounds; torch {torch.__version__}"
    )
    rows = [
        [
            "neck",
            "repeats",
            "batch",
            "params",
            "builder ms",
            "exported ms",
            f"exported/builder (target <= {TARGET:.2f})",
            "95% interval",
            "ratio range",
            "verdict",
        ]
    ]
    every_ratio = []
    for g in groups:
        ratios = [e / b for e, b in zip(g.exported_ms, g.builder_ms)]
        every_ratio += ratios
        ratio, (low, high), says = verdict(ratios)
        rows.append(
            [
                g.neck,
                str(g.repeats),
                str(g.batch),
                f"{g.params / 1e6:.2f}M",
                f"{statistics.median(g.builder_ms):.1f}",
                f"{statistics.median(g.exported_ms):.1f}",
                f"{ratio:.3f}",
                f"{low:.3f}..{high:.3f}",
                f"{min(ratios):.2f}..{max(ratios):.2f}",
                says,
            ]
        )
    ratio, (low, high), says = verdict(every_ratio)
    rows.append(["all rows", "", "", "", "", "", f"{ratio:.3f}", f"{low:.3f}..{high:.3f}", "", says])
    print(table(rows))


if __name__ == "__main__":
    main()
