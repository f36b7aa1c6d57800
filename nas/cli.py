"""The ``nasfpn`` command line.

Errors a user can cause -- a malformed genotype, an unknown neck, a missing file, an
impossible option -- print one line ``nasfpn: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nas.genotype import GenotypeError

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for; shown as one line, exit status 2."""


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


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
    show = necks_commands.add_parser("show", help="a neck's node table, and its graph as a picture")
    show.add_argument("neck", help="a fixed neck's name or a genotype JSON file")
    show.add_argument("--png", type=Path, help="draw the graph into this PNG file")
    _add_size_options(show)
    return parser


def _necks_list(args: argparse.Namespace) -> None:
    from fixed_necks import FIXED_NECKS
    from nas.profile import count_flops, count_parameters, neck_inputs

    inputs = neck_inputs(args.in_channels, args.image_size)
    widths = ",".join(map(str, args.in_channels))
    print(
        f"params and FLOPs at a {args.image_size}x{args.image_size} image, C3..C5 widths {widths}, "
        f"{args.channels} channels, each neck's own repeats and norm; "
        "FLOPs count a multiply-add as 2"
    )
    rows = [("name", "repeats", "params", "GFLOPs", "paper")]
    for name, neck in FIXED_NECKS.items():
        module = neck.build_twin(args.in_channels, args.channels)
        params, flops = count_parameters(module), count_flops(module, inputs)
        rows.append((name, str(neck.repeats), f"{params / 1e6:.2f}M", f"{flops / 1e9:.2f}", neck.paper))
    _print_table(rows)


def _necks_show(args: argparse.Namespace) -> None:
    from nas.draw import draw_genotype, node_table
    from nas.necks import resolve_neck
    from nas.profile import count_flops, count_parameters, neck_inputs

    spec = resolve_neck(args.neck)
    genotype = spec.genotype
    module = spec.build(args.in_channels, args.channels)
    params = count_parameters(module)
    flops = count_flops(module, neck_inputs(args.in_channels, args.image_size))
    print(
        f"{genotype.name or args.neck}: {len(genotype.nodes)} nodes, "
        f"repeats {spec.repeats}, norm {spec.norm}; "
        f"{params / 1e6:.2f}M params, {flops / 1e9:.2f} GFLOPs at {args.image_size}x{args.image_size}"
    )
    print(node_table(genotype))
    if args.png is not None:
        if not args.png.parent.is_dir():
            raise UsageError(f"--png {args.png}: folder {args.png.parent} does not exist")
        draw_genotype(genotype, args.png)
        print(f"wrote {args.png}")


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {("necks", "list"): _necks_list, ("necks", "show"): _necks_show}
    try:
        handlers[(args.command, args.necks_command)](args)
    except (GenotypeError, UsageError) as e:
        print(f"nasfpn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
