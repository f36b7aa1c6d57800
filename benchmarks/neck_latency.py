"""CPU forward latency of every fixed neck: hand-written vs genotype-built vs a reference; the cost
of AugFPN and RFP over FPN.

What it measures: for each neck in ``fixed_necks.FIXED_NECKS``, the wall-clock time of one
forward pass (eval mode, ``torch.inference_mode``, batch 2) of

- the hand-written module (``FixedNeck.build``),
- the same neck built from its genotype (``FixedNeck.build_twin``), and
- a reference implementation where one exists: torchvision's ``FeaturePyramidNetwork``
  (``LastLevelP6P7`` for ``fpn``, ``LastLevelMaxPool`` for ``fpn_maxpool``) and effdet's
  ``BiFpn`` for ``bifpn``.

Two settings:

- A, "realistic": a 512x512 image, ResNet-50's C3..C5 (512/1024/2048 channels at strides
  8/16/32, i.e. 64x64, 32x32, 16x16), 256 channels; fpn, fpn_maxpool, panet, bifpn, nasfpn.
- B, "BiFPN D0": a 512x512 image, EfficientNet-B0's widths 40/112/320, 64 channels, 3 repeats.

The necks without a genotype twin, AugFPN and DetectoRS' RFP, get a second table: their
parameters and latency as ratios to FPN's (RetinaNet's P6/P7, no norm), timed in the same rounds
in setting A. AugFPN and FPN run on the same C3..C5. RFP runs the backbone inside it (its FPN
feeds back into the body's stages, which run twice), so it is compared fairly as body + neck:
RFP with its ResNet-50 body against the same ResNet-50 body + FPN, both on the same images;
the ratios then say what RFP costs on top of a plain backbone with FPN.

How: threads are set to the machine's core count; every candidate is warmed up, then all
are timed in rounds: each round runs every (setting, neck) group, and within a group its
candidates back to back (A, B, C, then B, C, A, ... -- the order rotates so no candidate
always runs first), so drifting background load hits all of them alike. Reported: the median
over rounds of each candidate's time, and the median over rounds of the *paired* per-round
ratios (built/hand, ours/reference), which cancels most of the drift. Before timing it checks
that hand-written and built modules have equal parameter counts and the same output shapes,
and prints a warning row if not.

Run (about two minutes on two idle cores, four under load; RFP's ResNet-50 is most of it)::

    PYTHONPATH=. .venv/bin/python benchmarks/neck_latency.py
    PYTHONPATH=. .venv/bin/python benchmarks/neck_latency.py --rounds 30 --necks fpn,bifpn
    PYTHONPATH=. .venv/bin/python benchmarks/neck_latency.py --quick      # smoke run, ~5 s

Every neck runs its registry repeats (NAS-FPN: the paper's 7 cells, about 0.7 s a forward on
two cores, most of a round's ~2.7 s); ``--nasfpn-repeats`` lowers that on a slower machine.
The cells are identical, so the built/hand ratio does not depend on it.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fixed_necks import FIXED_NECKS
from nas.nets.backbone import BackboneWithNeck, resnet_body

BUILT_TARGET = 1.10  # genotype-built <= 1.10 x hand-written
REFERENCE_TARGETS = {"fpn": 1.05, "fpn_maxpool": 1.05, "bifpn": 1.00}  # ours <= target x reference
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Setting:
    """One input configuration: backbone widths, neck width, and which necks to run."""

    key: str
    label: str
    in_channels: tuple[int, int, int]
    out_channels: int
    necks: tuple[str, ...]
    repeats: dict[str, int] = field(default_factory=dict)  # overrides of the registry's repeats
    family: tuple[str, ...] = ()  # necks without a genotype twin, measured against FPN
    body: str = ""  # the backbone whose C3..C5 widths these are, for necks that run it


@dataclass
class Candidate:
    """A module to time and the zero-argument call that runs one forward on fixed inputs."""

    name: str  # "hand" | "built" | "ref", or "fpn" (what a family neck is compared with)
    module: nn.Module
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass
class Row:
    """One line of the results table."""

    neck: str
    setting: str
    params: str
    hand_ms: str = "-"
    built_ms: str = "-"
    built_ratio: str = "-"
    ref_ms: str = "-"
    ref_ratio: str = "-"
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        return [
            self.neck,
            self.setting,
            self.params,
            self.hand_ms,
            self.built_ms,
            self.built_ratio,
            self.ref_ms,
            self.ref_ratio,
            "; ".join(self.notes),
        ]


HEADER = [
    "neck",
    "setting",
    "params",
    "hand-written ms",
    "genotype-built ms",
    f"built/hand (target <= {BUILT_TARGET:.2f})",
    "reference ms",
    "ours/reference (target)",
    "notes",
]


def settings(nasfpn_repeats: int) -> list[Setting]:
    return [
        Setting(
            "A",
            "realistic",
            (512, 1024, 2048),
            256,
            ("fpn", "fpn_maxpool", "panet", "bifpn", "nasfpn"),
            {"nasfpn": nasfpn_repeats},
            family=("augfpn", "rfp"),
            body="resnet50",
        ),
        Setting("B", "BiFPN D0", (40, 112, 320), 64, ("bifpn",), {"bifpn": 3}),
    ]


def make_features(setting: Setting, batch: int, image: int) -> list[Tensor]:
    """C3..C5 for an ``image`` x ``image`` input (ceil-halving sizes, as torchvision's ResNets)."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, c, -(-image // s), -(-image // s), generator=generator)
        for c, s in zip(setting.in_channels, STRIDES)
    ]


def reference(neck: str, setting: Setting, repeats: int, image: int, feats: list[Tensor]) -> Candidate | None:
    """The reference implementation of ``neck`` under ``setting``, or None when there is none."""
    if neck in ("fpn", "fpn_maxpool"):
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        c = setting.out_channels
        extra = LastLevelP6P7(c, c) if neck == "fpn" else LastLevelMaxPool()
        fpn = FeaturePyramidNetwork(list(setting.in_channels), c, extra_blocks=extra).eval()
        named = OrderedDict((f"c{level}", x) for level, x in zip((3, 4, 5), feats))
        return Candidate("ref", fpn, lambda: fpn(named))
    if neck == "bifpn":
        try:
            with warnings.catch_warnings():  # effdet/timm import torch.jit.script, which is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                from effdet import get_efficientdet_config
                from effdet.efficientdet import BiFpn
        except ImportError:
            return None
        cfg = get_efficientdet_config("efficientdet_d0")
        cfg.fpn_channels = setting.out_channels
        cfg.fpn_cell_repeats = repeats
        cfg.image_size = (image, image)
        info = [dict(num_chs=c, reduction=s) for c, s in zip(setting.in_channels, STRIDES)]
        bifpn = BiFpn(cfg, info).eval()
        return Candidate("ref", bifpn, lambda: bifpn(list(feats)))  # its forward appends to the list
    return None


def output_shapes(out: Any) -> list[tuple[int, ...]]:
    values = out.values() if isinstance(out, dict) else out
    return [tuple(t.shape) for t in values]


def time_groups(groups: Sequence[Group | FamilyGroup], rounds: int, warmup: int) -> None:
    """Warm-up, then ``rounds`` rounds; each round times every candidate of every group once.

    A group's candidates run back to back (their order rotating round by round), so a paired
    ratio compares runs seconds apart; and every group runs in every round, so slow stretches
    of background load are spread over all necks instead of landing on one.
    """
    for _ in range(warmup):
        for g in groups:
            for c in g.candidates:
                c.run()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            start = time.perf_counter()
            for g in groups:
                n = len(g.candidates)
                for c in g.candidates[r % n :] + g.candidates[: r % n]:
                    t0 = time.perf_counter()
                    c.run()
                    c.times.append(time.perf_counter() - t0)
            print(
                f"  round {r + 1:>2}/{rounds}: {time.perf_counter() - start:5.1f}s, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        gc.enable()


def paired_ratio(num: Candidate, den: Candidate) -> float:
    return statistics.median(a / b for a, b in zip(num.times, den.times))


def spread(c: Candidate) -> float:
    """Interquartile range over the median, in percent: how noisy the samples were."""
    q1, _, q3 = statistics.quantiles(c.times, n=4)
    return 100 * (q3 - q1) / statistics.median(c.times)


def ms(c: Candidate) -> str:
    return f"{1e3 * statistics.median(c.times):.1f}"


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.3f} (<= {target:.2f}) {'ok' if ratio <= target else 'OVER'}"


def human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


@dataclass
class Group:
    """One (setting, neck): its candidates and the table rows that describe it."""

    neck: str
    label: str
    candidates: list[Candidate]
    row: Row
    warnings: list[Row]


def prepare(neck: str, setting: Setting, args: argparse.Namespace) -> Group:
    """Builds the candidates of one (setting, neck) and checks params and output shapes."""
    spec = FIXED_NECKS[neck]
    repeats = setting.repeats.get(neck, spec.repeats)
    label = f"{setting.key} {setting.label}" + (f", {repeats} repeats" if repeats > 1 else "")
    torch.manual_seed(0)
    hand = spec.build(list(setting.in_channels), setting.out_channels, repeats).eval()
    built = spec.build_twin(list(setting.in_channels), setting.out_channels, repeats).eval()
    feats = make_features(setting, args.batch, args.image)
    candidates = [
        Candidate("hand", hand, lambda: hand(feats)),
        Candidate("built", built, lambda: built(feats)),
    ]
    ref = reference(neck, setting, repeats, args.image, feats)
    if ref is not None:
        candidates.append(ref)
    group = Group(neck, label, candidates, Row(neck, label, human(candidates[0].params)), [])
    if candidates[0].params != candidates[1].params:
        differ = (
            f"PARAMETER COUNTS DIFFER: hand-written {candidates[0].params:,} "
            f"vs genotype-built {candidates[1].params:,}"
        )
        group.warnings.append(Row(neck, label, "WARNING", notes=[differ]))
    with torch.inference_mode():
        shapes = {c.name: output_shapes(c.run()) for c in candidates}
    if shapes["hand"] != shapes["built"]:
        differ = f"OUTPUT SHAPES DIFFER: {shapes['hand']} vs {shapes['built']}"
        group.warnings.append(Row(neck, label, "WARNING", notes=[differ]))
    if ref is not None:
        if ref.params != candidates[0].params:
            group.row.notes.append(f"reference has {human(ref.params)} params")
        if shapes["ref"] != shapes["hand"]:
            same_count = len(shapes["ref"]) == len(shapes["hand"])
            group.row.notes.append(
                f"reference returns {len(shapes['ref'])} levels" + (" of other shapes" if same_count else "")
            )
    return group


def summarize(group: Group, rounds: int) -> list[Row]:
    """The group's result row, then its warning rows."""
    row = group.row
    by_name = {c.name: c for c in group.candidates}
    hand, built, ref = by_name["hand"], by_name["built"], by_name.get("ref")
    row.hand_ms, row.built_ms = ms(hand), ms(built)
    row.built_ratio = verdict(paired_ratio(built, hand), BUILT_TARGET)
    if ref is not None:
        row.ref_ms = ms(ref)
        row.ref_ratio = verdict(paired_ratio(hand, ref), REFERENCE_TARGETS.get(group.neck, 1.0))
        row.notes.append(f"built/ref {paired_ratio(built, ref):.3f}")
    if rounds >= 4:
        row.notes.append("IQR " + "/".join(f"{spread(c):.0f}" for c in group.candidates) + "%")
    return [row, *group.warnings]


@dataclass
class FamilyGroup:
    """A neck without a genotype twin (candidate "hand") and FPN (candidate "fpn") on the same inputs."""

    neck: str
    label: str
    compared: str  # what the FPN side is: FPN alone, or a body + FPN
    candidates: list[Candidate]
    notes: list[str]


FAMILY_HEADER = [
    "neck",
    "setting",
    "compared with",
    "params",
    "params / FPN",
    "ms",
    "FPN ms",
    "ms / FPN",
    "notes",
]


def prepare_family(neck: str, setting: Setting, args: argparse.Namespace) -> FamilyGroup:
    """``neck`` and FPN under ``setting``: on the same C3..C5 -- or, for a neck that runs the backbone
    itself (RFP), the neck with its body against the same body + FPN, on the same images."""
    spec, widths = FIXED_NECKS[neck], list(setting.in_channels)
    torch.manual_seed(0)
    fpn: nn.Module = FIXED_NECKS["fpn"].build(widths, setting.out_channels)
    if spec.needs_images:
        generator = torch.Generator().manual_seed(0)
        inputs: Any = torch.randn(args.batch, 3, args.image, args.image, generator=generator)
        ours = spec.build(widths, setting.out_channels, body=resnet_body(setting.body))
        fpn = BackboneWithNeck(resnet_body(setting.body), fpn)
        compared = f"{setting.body} body + fpn (RFP includes its body)"
    else:
        inputs = make_features(setting, args.batch, args.image)
        ours = spec.build(widths, setting.out_channels)
        compared = "fpn, same C3..C5"
    ours.eval()
    fpn.eval()
    candidates = [Candidate("hand", ours, lambda: ours(inputs)), Candidate("fpn", fpn, lambda: fpn(inputs))]
    group = FamilyGroup(neck, f"{setting.key} {setting.label}", compared, candidates, [])
    with torch.inference_mode():
        shapes = [output_shapes(c.run()) for c in candidates]
    if shapes[0] != shapes[1]:
        group.notes.append(f"OUTPUT SHAPES DIFFER from FPN's: {shapes[0]} vs {shapes[1]}")
    return group


def summarize_family(group: FamilyGroup, rounds: int) -> list[str]:
    """The group's row of the cost-over-FPN table."""
    ours, fpn = group.candidates
    notes = list(group.notes)
    if rounds >= 4:
        notes.append("IQR " + "/".join(f"{spread(c):.0f}" for c in group.candidates) + "%")
    return [
        group.neck,
        group.label,
        group.compared,
        human(ours.params),
        f"{ours.params / fpn.params:.2f}",
        ms(ours),
        ms(fpn),
        f"{paired_ratio(ours, fpn):.2f}",
        "; ".join(notes),
    ]


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, table[1:])])


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 20; --quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; --quick: 1)")
    p.add_argument("--image", type=int, default=None, help="image side in pixels (default 512; --quick: 128)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--nasfpn-repeats",
        type=int,
        default=None,
        help=f"NAS-FPN cells in setting A (default: the registry's {FIXED_NECKS['nasfpn'].repeats}; "
        "--quick: 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the core count)")
    p.add_argument("--necks", default=None, help="comma-separated subset of the necks")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, 128x128 image, 1 NAS-FPN cell")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (3 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.image = args.image if args.image is not None else (128 if quick else 512)
    if args.nasfpn_repeats is None:
        args.nasfpn_repeats = 1 if quick else FIXED_NECKS["nasfpn"].repeats
    if args.rounds < 1 or args.warmup < 0 or args.image < 32 or args.nasfpn_repeats < 1:
        p.error("need --rounds >= 1, --warmup >= 0, --image >= 32, --nasfpn-repeats >= 1")
    if args.necks is not None:
        unknown = set(args.necks.split(",")) - set(FIXED_NECKS)
        if unknown:
            p.error(f"unknown necks {sorted(unknown)} (known: {', '.join(FIXED_NECKS)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    wall = time.perf_counter()
    args = parse_args(argv)
    threads = args.threads or core_count()
    torch.set_num_threads(threads)
    wanted = set(args.necks.split(",")) if args.necks else None
    registry_repeats = FIXED_NECKS["nasfpn"].repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({core_count()} cores available)")
    print(f"load average at start {os.getloadavg()[0]:.1f} (other work on the machine inflates every time)")
    print(
        f"batch {args.batch}, image {args.image}x{args.image}, {args.warmup} warm-up + {args.rounds} "
        "interleaved rounds over all necks; median ms per forward, ratios are medians of per-round pairs"
    )
    if args.nasfpn_repeats != registry_repeats:
        print(
            f"note: nasfpn runs {args.nasfpn_repeats} cell(s), not the registry's (and paper's) "
            f"{registry_repeats}; built/hand per cell is unaffected, absolute ms are not comparable"
        )
    groups = [
        prepare(neck, setting, args)
        for setting in settings(args.nasfpn_repeats)
        for neck in setting.necks
        if wanted is None or neck in wanted
    ]
    family = [
        prepare_family(neck, setting, args)
        for setting in settings(args.nasfpn_repeats)
        for neck in setting.family
        if wanted is None or neck in wanted
    ]
    with torch.inference_mode():
        time_groups([*groups, *family], args.rounds, args.warmup)
    rows = [row for g in groups for row in summarize(g, args.rounds)]
    print()
    print(markdown(HEADER, [r.cells() for r in rows]))
    if family:
        print()
        print(
            "Cost over FPN (the same rounds): params and paired latency ratios. RFP runs its backbone "
            "inside it, so it is counted with its body, against that body + FPN on the same images."
        )
        print(markdown(FAMILY_HEADER, [summarize_family(g, args.rounds) for g in family]))
    print()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"total wall time {time.perf_counter() - wall:.0f}s"
    )
    print("notes: IQR = interquartile range / median of hand/built/ref samples (noise); ours = hand-written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
