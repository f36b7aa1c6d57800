"""The ``nasfpn`` command line.

Errors a user can cause -- a malformed genotype, an unknown neck, a missing file, an
impossible option -- print one line ``nasfpn: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from nas.errors import NasfpnError, UsageError
from nas.settings import BACKBONE_WIDTHS, BUDGETS, DETECTORS, ROI_MODES, ProxySettings
from nas.tables import format_table

if TYPE_CHECKING:
    from nas.data.coco import CocoDetection

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_DATA = Path("data/shapes")


def _progress(line: str) -> None:
    """A line of progress of long work, flushed: a log file being followed sees it at once."""
    print(line, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other user error, instead of argparse's usage dump.
        self.exit(EXIT_USAGE, f"nasfpn: error: {message} (see '{self.prog} --help')\n")


def _widths(text: str) -> tuple[int, int, int]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated integers") from None
    if len(widths) != 3 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give the positive widths of C3,C4,C5")
    return widths  # type: ignore[return-value]


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
        return value

    return parse


_positive = _at_least(1)


def parse_repeats(text: str) -> dict[str, int]:
    """``NECK=K,...`` -> {NECK: K}, each K a positive integer."""
    repeats = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, count = item.partition("=")
        if not equals or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: give NECK=K, K a positive integer, e.g. fpn=3")
        repeats[name.strip()] = int(count)
    return repeats


def parse_space_options(text: str) -> dict[str, int | str | None]:
    """``NAME=VALUE,...`` -> {NAME: VALUE}: an integer where VALUE is one, None for ``none``,
    else the text; the space checks names and values (``search_spaces.get_space``)."""
    options: dict[str, int | str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name or not value:
            raise argparse.ArgumentTypeError(f"{item!r}: give NAME=VALUE, e.g. cells=9")
        options[name] = int(value) if value.lstrip("-").isdigit() else None if value == "none" else value
    return options


def _add_size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-size", type=_positive, default=512, help="square input image side (default 512)"
    )
    parser.add_argument(
        "--in-channels",
        type=_widths,
        default=(512, 1024, 2048),
        help="widths of C3,C4,C5 (default ResNet-50's)",
    )
    parser.add_argument("--channels", type=_positive, default=256, help="neck width (default 256)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nasfpn", description="Neural architecture search for feature-pyramid necks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    necks = commands.add_parser("necks", help="the hand-designed necks and genotype files")
    necks_commands = necks.add_subparsers(dest="necks_command", required=True, parser_class=_Parser)
    listing = necks_commands.add_parser("list", help="name, paper, params and FLOPs of each fixed neck")
    _add_size_options(listing)
    listing.set_defaults(handler=_necks_list)
    show = necks_commands.add_parser("show", help="a neck's node table, and its graph as a picture")
    show.add_argument("neck", help="a fixed neck's name or a genotype JSON file")
    show.add_argument("--png", type=Path, help="draw the graph into this PNG file")
    _add_size_options(show)
    show.set_defaults(handler=_necks_show)

    import nas.data.synth as synth_module

    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = data_commands.add_parser("synth", help="write the embedded multi-scale dataset (COCO format)")
    synth.add_argument("--out", type=Path, default=DEFAULT_DATA, help=f"folder (default {DEFAULT_DATA})")
    synth.add_argument(
        "--train",
        type=_positive,
        default=synth_module.DEFAULT_TRAIN,
        help=f"training images (default {synth_module.DEFAULT_TRAIN})",
    )
    synth.add_argument(
        "--val",
        type=_positive,
        default=synth_module.DEFAULT_VAL,
        help=f"validation images (default {synth_module.DEFAULT_VAL})",
    )
    synth.add_argument(
        "--size",
        type=_at_least(synth_module.MIN_SIZE),
        default=synth_module.DEFAULT_SIZE,
        help=f"image side in pixels (default {synth_module.DEFAULT_SIZE})",
    )
    synth.add_argument("--seed", type=_at_least(0), default=0, help="generator seed (default 0)")
    synth.set_defaults(handler=_data_synth)

    train = commands.add_parser("train", help="train one proxy detector with a neck; print COCO AP")
    train.add_argument("--neck", required=True, help="a fixed neck's name or a genotype JSON file")
    _add_data_options(train)
    _add_proxy_options(train)
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--out", type=Path, help="run folder (default runs/train/NECK-sSEED)")
    train.set_defaults(handler=_train)
    _add_search_commands(commands)
    _add_export_command(commands)
    _add_inspect_commands(commands)
    return parser


def _add_search_commands(commands: argparse._SubParsersAction) -> None:
    from nas.controllers import CONTROLLERS
    from search_spaces import SPACES

    search = commands.add_parser(
        "search",
        help="search for a neck (resumes runs/NAME if it exists)",
        description="Runs a neck search, or resumes runs/NAME with its saved settings (only --trials, "
        "--workers and the execution options may change on resume).",
    )
    search.add_argument("--name", default="search", help="run name: the folder runs/NAME (default 'search')")
    search.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders live")
    search.add_argument("--space", choices=list(SPACES), help="search space (default nasfpn)")
    search.add_argument(
        "--space-options",
        type=parse_space_options,
        metavar="NAME=VALUE,...",
        help="the space's own options: nasfpn cells=7, fusion max_nodes=16; either repeats=1, norm=bn",
    )
    search.add_argument("--controller", choices=CONTROLLERS, help="controller (default rl)")
    search.add_argument(
        "--trials", type=_positive, help="trials in the study, counting done ones (default 20)"
    )
    search.add_argument(
        "--seed-with", help="known necks to try first, e.g. nasfpn (must be points of the space)"
    )
    search.add_argument("--objective", help="ap (default), ap,latency or ap,flops")
    search.add_argument(
        "--reward", choices=("pareto", "scalar"), help="how ap,COST is optimised (see README)"
    )
    search.add_argument("--cost-target", type=float, help="the scalar reward's target cost (default: FPN's)")
    search.add_argument("--seed", type=_at_least(0), help="controller and training seed (default 0)")
    search.add_argument("--scheduler", choices=("asha", "none"), default="asha", help="early stopping")
    search.add_argument("--workers", type=_positive, help="trials at a time (default: CPUs / cpus-per-trial)")
    search.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPU share of a trial (default 1)")
    search.add_argument("--gpus-per-trial", type=float, help="GPU share of a trial (default 1 with a GPU)")
    search.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    search.add_argument("--storage", help="SQLAlchemy URL of the Optuna storage (default runs/NAME/study.db)")
    search.add_argument(
        "--calibration", type=Path, help="a nasfpn calibrate folder: with --budget calibrated, its budget"
    )
    _add_data_options(search)
    _add_proxy_options(search, budget=_budget_or_calibrated)
    search.set_defaults(handler=_search)

    calibrate = commands.add_parser(
        "calibrate",
        help="can the proxy be trusted on this data, and at which budget? calibration.md/.csv/.png/.json",
        description="Surveys the data, trains a panel of necks (no fusion, FPN, PANet, BiFPN, NAS-FPN, "
        "random points of the space) at each candidate budget and once at a longer reference budget with "
        "the backbone trained, and says which budget ranks them as the reference does (resumable).",
    )
    calibrate.add_argument(
        "--budgets", default="quick,default,full", help="candidate budgets (default %(default)s)"
    )
    calibrate.add_argument(
        "--reference", default="long", help="the reference budget, longer than every candidate (default long)"
    )
    calibrate.add_argument(
        "--seeds", type=_at_least(2), default=2, help="seeds a candidate budget (default 2)"
    )
    calibrate.add_argument(
        "--space", choices=list(SPACES), default="nasfpn", help="where random points come from"
    )
    calibrate.add_argument("--random-points", type=_at_least(0), default=3, help="of the space (default 3)")
    calibrate.add_argument(
        "--out", type=Path, default=Path("runs/calibrate"), help="folder (default %(default)s)"
    )
    _add_training_resources(calibrate)
    _add_data_options(calibrate)
    _add_proxy_options(calibrate, budget=None)
    calibrate.set_defaults(handler=_calibrate)

    compare = commands.add_parser(
        "compare",
        help="train found cells and baselines with one recipe and the same seeds; compare.md/.csv/.png",
        description="With a run folder: its top cells against the baselines on the run's proxy (proxy and "
        "data options are the run's, except --budget). Without: the baselines alone, on the data and "
        "proxy the options give.",
    )
    compare.add_argument("run", type=Path, nargs="?", help="a search run folder, e.g. runs/s1")
    compare.add_argument("--top", type=_positive, default=1, help="found cells to compare (default 1)")
    compare.add_argument(
        "--baselines",
        default="fpn,panet,bifpn,nasfpn",
        help="fixed necks or genotype files (default %(default)s); NECK@ROI trains NECK with RoI mode "
        "ROI (fpn, panet, soft; --detector fasterrcnn), e.g. fpn,fpn@panet,fpn@soft,augfpn",
    )
    cost = compare.add_mutually_exclusive_group()
    cost.add_argument(
        "--repeats",
        type=parse_repeats,
        default={},
        metavar="NECK=K,...",
        help="cell repeats of the baselines named (default: each neck's own), e.g. fpn=3,bifpn=2",
    )
    cost.add_argument(
        "--match-flops",
        action="store_true",
        help="repeat each baseline to the FLOPs nearest the best found cell's (without a run: the "
        "first baseline's), as EfficientDet compares necks",
    )
    compare.add_argument("--seeds", type=_positive, default=3, help="seeds 0..N-1 per neck (default 3)")
    compare.add_argument("--out", type=Path, help="output folder (default RUN/compare, or runs/compare)")
    _add_training_resources(compare)
    _add_data_options(compare)
    _add_proxy_options(compare)
    compare.set_defaults(handler=_compare)

    status = commands.add_parser("status", help="a search's leaderboard")
    status.add_argument("run", type=Path, help="the run folder, e.g. runs/search")
    status.add_argument("--top", type=_positive, default=10, help="rows (default 10)")
    status.set_defaults(handler=_status)


def _add_training_resources(parser: argparse.ArgumentParser) -> None:
    """--workers, --cpus-per-trial, --gpus-per-trial, --address of commands that train necks as Ray tasks."""
    parser.add_argument(
        "--workers", type=_positive, help="trainings at a time (default: CPUs / cpus-per-trial)"
    )
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, help="GPU share of a training (default 1 with a GPU)")
    parser.add_argument("--address", help="join this Ray cluster (default: start a local one)")


def _training_resources(args: argparse.Namespace) -> tuple[int, float, float]:
    """Trainings at a time, CPUs and GPUs of each, from ``_add_training_resources``' options."""
    from nas.search.cluster import trial_resources

    return trial_resources(args.workers, args.cpus_per_trial, args.gpus_per_trial)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: the embedded dataset, made if missing)")
    group.add_argument(
        "--data", type=Path, help="a COCO-layout folder (annotations/instances_{train,val}.json)"
    )
    group.add_argument("--train-json", type=Path, help="training annotations (with --val-json and --images)")
    group.add_argument("--val-json", type=Path, help="validation annotations")
    group.add_argument("--images", type=Path, help="folder the json files' file_name values are relative to")


def _budget(text: str) -> str:
    from nas.settings import budget_of

    try:
        budget_of(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _budget_or_calibrated(text: str) -> str:
    return text if text == "calibrated" else _budget(text)


def _add_proxy_options(
    parser: argparse.ArgumentParser, budget: Callable[[str], str] | None = _budget
) -> None:
    """The proxy detector's options; ``budget`` parses ``--budget`` (None: no such option)."""
    defaults = ProxySettings()
    group = parser.add_argument_group("proxy detector")
    group.add_argument("--detector", choices=DETECTORS, default=defaults.detector)
    group.add_argument(
        "--roi",
        choices=ROI_MODES,
        help=f"Faster R-CNN's RoI features: fpn (one level by size; default {defaults.roi}), panet "
        "(adaptive feature pooling), soft (AugFPN's soft RoI selection; augfpn's own default)",
    )
    if budget is not None:
        group.add_argument(
            "--budget",
            type=budget,
            default=defaults.budget,
            help=f"{', '.join(BUDGETS)} or a number of steps (default {defaults.budget})"
            + (", or calibrated (--calibration)" if budget is _budget_or_calibrated else ""),
        )
    group.add_argument("--backbone", choices=list(BACKBONE_WIDTHS), default=defaults.backbone)
    group.add_argument("--backbone-checkpoint", type=Path, help="ResNet weights (state_dict) to start from")
    group.add_argument(
        "--train-backbone",
        action="store_true",
        help="train the backbone in every trial (slower; default: frozen)",
    )
    group.add_argument("--image-size", type=_positive, default=defaults.image_size)
    group.add_argument("--width", type=_positive, default=defaults.width, help="neck and head channels")
    group.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="pretrained backbones")


def proxy_settings(args: argparse.Namespace) -> ProxySettings:
    """The proxy settings the options ask for."""
    checkpoint = args.backbone_checkpoint
    if args.roi not in (None, "fpn") and args.detector != "fasterrcnn":
        raise UsageError("--roi applies to the two-stage detector only")
    return ProxySettings(
        detector=args.detector,
        roi=args.roi or ProxySettings.roi,
        backbone=args.backbone,
        backbone_checkpoint=str(checkpoint) if checkpoint is not None else None,
        freeze_backbone=not args.train_backbone,
        image_size=args.image_size,
        width=args.width,
        budget=getattr(args, "budget", ProxySettings.budget),
    )


def load_datasets(args: argparse.Namespace) -> tuple[CocoDetection, CocoDetection]:
    """The training and validation splits the data options name (the embedded set by default)."""
    from nas.data.coco import CocoDetection
    from nas.data.synth import synthesize

    explicit = [args.train_json, args.val_json, args.images]
    if any(x is not None for x in explicit):
        if None in explicit or args.data is not None:
            raise UsageError("give --train-json, --val-json and --images together, or --data alone")
        return CocoDetection(args.train_json, args.images), CocoDetection(args.val_json, args.images)
    root = args.data
    if root is None:
        root = synthesize(DEFAULT_DATA)
    elif not root.is_dir():
        raise UsageError(f"--data {root}: no such folder")
    return CocoDetection.from_dir(root, "train"), CocoDetection.from_dir(root, "val")


def _necks_list(args: argparse.Namespace) -> None:
    from fixed_necks import FIXED_NECKS
    from nas.proxy.necks import resolve_neck
    from nas.proxy.profile import backbone_with_widths, profile_neck

    widths = ",".join(map(str, args.in_channels))
    print(
        f"params and FLOPs at a {args.image_size}x{args.image_size} image, C3..C5 widths {widths}, "
        f"{args.channels} channels, each neck's own repeats and norm; "
        "FLOPs count a multiply-add as 2; a neck that runs the backbone: less one backbone pass "
        "(-: no backbone has these widths)"
    )
    rows = [("name", "repeats", "params", "GFLOPs", "paper")]
    for name, neck in FIXED_NECKS.items():
        params = flops = "-"
        if not neck.needs_images or backbone_with_widths(args.in_channels) is not None:
            cost = profile_neck(resolve_neck(name), args.in_channels, args.channels, args.image_size)
            params, flops = f"{cost['params'] / 1e6:.2f}M", f"{cost['flops'] / 1e9:.2f}"
        rows.append((name, str(neck.repeats), params, flops, neck.paper))
    print(format_table(rows))


def _necks_show(args: argparse.Namespace) -> None:
    from nas.inspect.draw import draw_genotype, node_table
    from nas.proxy.necks import resolve_neck
    from nas.proxy.profile import profile_neck

    spec = resolve_neck(args.neck)
    genotype = spec.genotype
    try:
        cost = profile_neck(spec, args.in_channels, args.channels, args.image_size)
    except ValueError as e:  # a neck that runs the backbone, at widths no backbone has
        raise UsageError(f"--in-channels: {e}") from None
    size = (
        f"repeats {spec.repeats}, norm {spec.norm}; {cost['params'] / 1e6:.2f}M params, "
        f"{cost['flops'] / 1e9:.2f} GFLOPs at {args.image_size}x{args.image_size}"
    )
    if genotype is None:
        assert spec.fixed is not None
        print(f"{spec.name}: hand-written, no genotype twin (no graph to show or draw); {size}")
        print(spec.fixed.paper)
        if args.png is not None:
            raise UsageError(f"--png: {spec.name} has no genotype to draw")
        return
    print(f"{genotype.name or args.neck}: {len(genotype.nodes)} nodes, {size}")
    print(node_table(genotype))
    if args.png is not None:
        if not args.png.parent.is_dir():
            raise UsageError(f"--png {args.png}: folder {args.png.parent} does not exist")
        draw_genotype(genotype, args.png)
        print(f"wrote {args.png}")


def _data_synth(args: argparse.Namespace) -> None:
    from nas.data.synth import synthesize

    try:
        root = synthesize(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    print(f"dataset in {root} (annotations/instances_train.json, annotations/instances_val.json)")


def _train(args: argparse.Namespace) -> None:
    from nas.proxy.evaluate import METRICS
    from nas.proxy.necks import resolve_neck
    from nas.proxy.prepare import prepare_proxy_data
    from nas.proxy.train import roi_mode, train_proxy

    neck = resolve_neck(args.neck)  # first: a bad genotype fails before any data work
    settings = proxy_settings(args)
    if args.roi is not None:  # an explicit --roi wins over the neck's own (AugFPN's soft)
        neck = replace(neck, roi=args.roi)
    train, val = load_datasets(args)
    name = neck.name or Path(args.neck).stem
    out = args.out or Path("runs") / "train" / f"{name}-s{args.seed}"
    data = prepare_proxy_data(train, val, settings, args.cache_dir)
    metrics = train_proxy(neck, data, settings, seed=args.seed, out_dir=out)
    roi = roi_mode(neck, settings)
    print(
        f"{name}: {settings.detector}{f' ({roi} RoI features)' if roi else ''}, "
        f"{settings.backbone}{'' if args.train_backbone else ' (frozen)'}, "
        f"budget {settings.budget}, seed {args.seed}, {metrics['seconds']:.0f} s"
        + (
            f" (went on from the state saved at step {metrics['resumed_at']})"
            if metrics["resumed_at"]
            else ""
        )
    )
    print("  ".join(f"{m} {metrics[m] * 100:5.1f}" if m in metrics else f"{m}     -" for m in METRICS))
    groups = [m for m in metrics if m.startswith("AP_")]  # per supercategory, when there are several
    if groups:
        print("  ".join(f"{m} {metrics[m] * 100:5.1f}" for m in groups))
    print(f"wrote {out}/metrics.json, checkpoint.pt, tb/ (tensorboard --logdir {out})")


def _search(args: argparse.Namespace) -> int | None:
    from nas.inspect.leaderboard import best_trial, leaderboard
    from nas.search.configure import SearchRequest, search_config
    from nas.search.driver import run_search
    from nas.search.runs import RunFolder

    run = RunFolder(args.runs_dir / args.name)
    calibration = _calibration(args)  # first: it sets args.budget
    request = SearchRequest(
        name=args.name,
        splits=lambda: load_datasets(args),
        data_given=any(x is not None for x in (args.data, args.train_json, args.val_json, args.images)),
        proxy=proxy_settings(args),
        space=args.space,
        space_options=args.space_options,
        controller=args.controller,
        seed=args.seed,
        objective=args.objective,
        reward=args.reward,
        cost_target=args.cost_target,
        seed_with=args.seed_with,
        storage=args.storage,
        calibration=calibration,
        trials=args.trials,
        workers=args.workers,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler,
        on_cluster=args.address is not None,
    )
    config = search_config(run, request)
    resume = f"nasfpn search --name {args.name}" + (
        f" --runs-dir {args.runs_dir}" if args.runs_dir != Path("runs") else ""
    )
    try:
        outcome = run_search(config, run, address=args.address, cache_dir=args.cache_dir, out=_progress)
    except KeyboardInterrupt:
        print(f"stopped; finished trials are kept. Resume with: {resume}", file=sys.stderr)
        raise
    print(leaderboard(run))
    if outcome.elsewhere:
        print(
            f"{outcome.elsewhere} trial(s) still training in other drivers of this study "
            "(in nasfpn status when done)"
        )
    if not outcome.finished:
        print(f"stopped with {outcome.done}/{config.trials} trials done. Resume with: {resume}")
        return EXIT_INTERRUPTED
    print(f"done in {outcome.seconds / 60:.1f} min. Next:")
    print(f"  nasfpn status {run.path}    # this table again")
    best = best_trial(run)
    if best is not None:
        genotype = run.trial_dir(best.number) / "genotype.json"
        print(f"  nasfpn necks show {genotype} --png best.png    # the best cell, drawn")
        print(f"  nasfpn train --neck {genotype} --budget full    # the best cell, trained longer")
    return None


def _calibration(args: argparse.Namespace) -> dict[str, str]:
    """With ``--budget calibrated``: puts the budget ``--calibration`` chose into ``args.budget``
    and returns what the config records of it; else {}."""
    if args.budget != "calibrated":
        if args.calibration is not None:
            raise UsageError("--calibration is read with --budget calibrated only")
        return {}
    if args.calibration is None:
        raise UsageError("--budget calibrated needs --calibration DIR (a nasfpn calibrate --out folder)")
    from nas.search.calibrate import calibrated_budget

    train, val = load_datasets(args)
    splits = (Path(train.annotation_file), Path(val.annotation_file))
    args.budget = calibrated_budget(args.calibration, proxy_settings(args), *splits)
    return {"folder": str(args.calibration.resolve()), "budget": args.budget}


def _calibrate(args: argparse.Namespace) -> None:
    from nas.search.calibrate import check_budgets, run_calibration
    from search_spaces import get_space

    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    check_budgets(budgets, args.reference)  # before the data is read or made
    settings = proxy_settings(args)
    try:
        text = run_calibration(
            load_datasets(args),
            settings,
            budgets,
            args.reference,
            args.seeds,
            get_space(args.space),
            args.random_points,
            args.out,
            _training_resources(args),
            args.cache_dir,
            address=args.address,
            out=_progress,
        )
    except KeyboardInterrupt:
        print(
            f"stopped; finished trainings are kept in {args.out}/jobs and stopped ones go on from their "
            "last saved state. Resume with the same command.",
            file=sys.stderr,
        )
        raise
    print(text)
    print(f"wrote {args.out}/calibration.md, calibration.csv, calibration.png, calibration.json")


def _compare(args: argparse.Namespace) -> None:

    from nas.proxy.prepare import prepare_proxy_data
    from nas.search.compare import (
        baseline_entry,
        claim_jobs_folder,
        entries,
        matched_repeats,
        measure_costs,
        run_jobs,
        set_repeats,
        write_results,
    )
    from nas.search.driver import load_splits
    from nas.search.runs import RunFolder

    baselines = [n.strip() for n in args.baselines.split(",") if n.strip()]
    if args.run is not None:
        run = RunFolder.existing(args.run)
        if any(x is not None for x in (args.data, args.train_json, args.val_json, args.images)):
            raise UsageError("a run's comparison uses the run's data: drop the data options")
        config = run.load_config()
        settings = replace(config.proxy_settings, budget=args.budget)
        try:  # an unknown neck or a bad RoI mode fails before any training
            items = entries(run, args.top, baselines)
        except ValueError as e:
            raise UsageError(f"--baselines {e}") from None
        if not any(e.found for e in items):
            raise UsageError(f"{args.run}: no completed trial to compare yet")
        out_dir = args.out or run.path / "compare"
    else:
        settings = proxy_settings(args)
        try:
            items = [baseline_entry(name, settings.detector, args.roi) for name in baselines]
        except ValueError as e:
            raise UsageError(f"--baselines {e}") from None
        out_dir = args.out or Path("runs") / "compare"
    try:
        set_repeats(items, matched_repeats(items, settings) if args.match_flops else args.repeats)
    except ValueError as e:
        raise UsageError(f"--repeats {e}") from None
    splits = load_splits(config) if args.run is not None else load_datasets(args)
    claim_jobs_folder(out_dir, settings, *(split.annotation_file for split in splits))
    data = prepare_proxy_data(*splits, settings, args.cache_dir)
    seeds = list(range(args.seeds))
    measure_costs(items, settings)
    try:
        run_jobs(
            items,
            seeds,
            data,
            settings,
            out_dir,
            *_training_resources(args),
            address=args.address,
            out=_progress,
        )
    except KeyboardInterrupt:
        print(
            f"stopped; finished trainings are kept in {out_dir}/jobs and stopped ones go on from their "
            "last saved state. Resume with the same command.",
            file=sys.stderr,
        )
        raise
    print(write_results(items, seeds, settings, out_dir))
    print(f"wrote {out_dir}/compare.md, compare.csv, compare.png")


def _status(args: argparse.Namespace) -> None:
    from nas.inspect.leaderboard import leaderboard

    print(leaderboard(_inspected_run(args.run), args.top))


def _add_inspect_commands(commands: argparse._SubParsersAction) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        help="serve a search's study with optuna-dashboard (each trial's cell drawn)",
        description="Serves runs/NAME's study with optuna-dashboard, also while the search runs. Each "
        "trial gets its cell picture and genotype.json as artifacts and a note (written into the study).",
    )
    dashboard.add_argument("run", type=Path, help="the run folder, e.g. runs/search")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    dashboard.set_defaults(handler=_dashboard)

    report = commands.add_parser("report", help="an HTML report of a search: plots, top cells, baselines")
    report.add_argument("run", type=Path, help="the run folder, e.g. runs/search")
    report.add_argument("--top", type=_positive, default=5, help="cells drawn (default 5; the table: twice)")
    report.add_argument("--out", type=Path, help="folder (default RUN/report)")
    report.set_defaults(handler=_report)


def _port(text: str) -> int:
    port = _at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535)")
    return port


def _inspected_run(path: Path):
    """The run folder at ``path`` with a study to read, or a UsageError."""
    from nas.search.runs import RunFolder

    run = RunFolder.existing(path)
    try:
        run.load_study()
    except ValueError as e:
        raise UsageError(str(e)) from None
    except KeyError:
        raise UsageError(f"{path}: its search has not created its study yet") from None
    return run


def _dashboard(args: argparse.Namespace) -> None:
    from nas.inspect.dashboard import serve

    run = _inspected_run(args.run)
    try:
        serve(run, args.host, args.port, out=_progress)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def _report(args: argparse.Namespace) -> None:
    from nas.inspect.report import write_report

    run = _inspected_run(args.run)
    index = write_report(run, out=args.out, top=args.top)
    print(f"wrote {index} (open it in a browser)")


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="a neck as a standalone neck.py (+ genotype.json, weights.pt)",
        description="Writes OUT/neck.py (a PyTorch module that imports only torch), OUT/genotype.json "
        "and, for a run's trial that saved a checkpoint, OUT/weights.pt. TARGET is a run folder (its best "
        "trial, or --trial N; built as the run built it), a fixed neck's name or a genotype file.",
    )
    export.add_argument("target", help="runs/NAME, a fixed neck's name or a genotype JSON file")
    export.add_argument("--out", type=Path, required=True, help="folder to write into (made if missing)")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", type=_at_least(0), help="a run's trial number")
    which.add_argument("--best", action="store_true", help="a run's best completed trial (the default)")
    group = export.add_argument_group("build (a fixed neck or a genotype file only)")
    group.add_argument("--in-channels", type=_widths, help="widths of C3,C4,C5 (default ResNet-50's)")
    group.add_argument("--channels", type=_positive, help="neck width (default 256)")
    group.add_argument("--repeats", type=_positive, help="cell repeats (default: the neck's own, a file's 1)")
    group.add_argument("--norm", choices=("bn", "gn", "none"), help="normalisation (default: the neck's own)")
    export.add_argument(
        "--image-size", type=_positive, default=512, help="square image side for the FLOPs (default 512)"
    )
    export.add_argument("--force", action="store_true", help="overwrite an earlier export in OUT")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    from nas.export.bundle import export_command

    print(
        export_command(
            args.target,
            args.out,
            trial=args.trial,
            best=args.best,
            in_channels=args.in_channels,
            channels=args.channels,
            repeats=args.repeats,
            norm=args.norm,
            image_size=args.image_size,
            force=args.force,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except NasfpnError as e:
        print(f"nasfpn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nasfpn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
