"""How long ``nasfpn report`` takes on a 200-trial study (target: 10 s at most).

The study is synthetic, as in tests/test_report.py: genotypes sampled from the nasfpn space,
made-up metrics, some trials failed or stopped early, FPN's baseline. The time is that of the
command as a user runs it, in a fresh process (imports included), best of ``--repeat``.

    .venv/bin/python benchmarks/report_speed.py [--trials 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TARGET_SECONDS = 10.0


def main() -> None:
    from helpers import make_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        failed = set(range(7, args.trials, 23))
        pruned = set(range(3, args.trials, 4)) - failed
        run = make_run(Path(tmp) / "bench", trials=args.trials, failed=failed, pruned=pruned)
        print(
            f"study: {args.trials} trials ({len(pruned)} pruned, {len(failed)} failed), "
            f"made in {time.perf_counter() - start:.1f} s"
        )
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "nas", "report", str(run.path)], cwd=ROOT, check=True)
            times.append(time.perf_counter() - start)
        pngs = sorted(p.name for p in (run.path / "report").glob("*.png"))
        print(f"{len(pngs)} PNGs: {', '.join(pngs)}")
        best = min(times)
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"nasfpn report on {args.trials} trials: {best:.2f} s (runs: {runs}); "
            f"target <= {TARGET_SECONDS:.0f} s: {'met' if best <= TARGET_SECONDS else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
