"""Sample efficiency of the controllers: trials needed to reach the top 1% of the nasfpn space.

Training a detector per trial is far too slow to compare controllers over many repeats, so the
objective is a cheap, fixed stand-in with the kind of structure real necks have: a score of the
genotype (not of the decisions, so it is a property of the neck) summed over the nodes that reach
an output, with hidden weights drawn once from N(0, 1) with a fixed seed:

    for each used node at level L, combining c, reading inputs at levels a <= b:
        pair[L, a] + pair[L, b]          which scales each level reads from
      + combine[L, c]                    which merge op suits each level
      + 0.5 * triple[L, a, b]            interaction of the two inputs' levels
      + depth[L] * (number of inputs that are nodes, not pyramid levels)

Input levels depend on other cells' level decisions and a node counts only if it reaches an output,
so decisions interact; a learner can exploit the structure, random search cannot. The threshold is
the 99th percentile of the score over ``--samples`` uniformly random genotypes (the distribution
random search draws from). Each controller runs ``--repeats`` times (seeds 0..repeats-1, fresh
in-memory study, default options) until a trial reaches the threshold, at most ``--cap`` trials;
capped runs count as ``cap`` (so their means are lower bounds) and are reported.

    .venv/bin/python benchmarks/controllers.py [--repeats 20] [--cap 1000] [--cells 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import optuna

from nas.controllers import CONTROLLERS, make_controller
from nas.genotype import COMBINES, LEVELS, NUM_INPUTS, Genotype
from search_spaces import SearchSpace, get_space

SCORE_SEED = 2024
WIDTHS = (10, 7, 7, 7, 14, 12)  # of the table's columns


class StandInScore:
    """The fixed score of a genotype described in the module docstring."""

    def __init__(self, seed: int = SCORE_SEED) -> None:
        rng = np.random.default_rng(seed)
        levels, combines = len(LEVELS), len(COMBINES)
        self.pair = rng.standard_normal((levels, levels))
        self.combine = rng.standard_normal((levels, combines))
        self.triple = 0.5 * rng.standard_normal((levels, levels, levels))
        self.depth = rng.standard_normal(levels)
        self.combine_index = {name: i for i, name in enumerate(COMBINES)}

    def __call__(self, genotype: Genotype) -> float:
        used = genotype.used_entries()
        score = 0.0
        for i, node in enumerate(genotype.nodes):
            if NUM_INPUTS + i not in used:
                continue
            level = node.level - LEVELS[0]
            inputs = sorted(genotype.entry_levels[j] - LEVELS[0] for j in node.inputs)
            score += sum(self.pair[level, a] for a in inputs)
            score += self.combine[level, self.combine_index[node.combine]]
            score += self.triple[level, inputs[0], inputs[-1]]
            score += self.depth[level] * sum(j >= NUM_INPUTS for j in node.inputs)
        return float(score)


class _UniformTrial:
    """Answers ``suggest_categorical`` uniformly at random: RandomSampler's distribution, fast."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[int | str]) -> int | str:
        return choices[int(self.rng.integers(len(choices)))]


def top_threshold(space: SearchSpace, score: StandInScore, samples: int, quantile: float = 0.99) -> float:
    trial = _UniformTrial(np.random.default_rng(0))
    scores = [score(space.sample(trial)) for _ in range(samples)]  # type: ignore[arg-type]
    return float(np.quantile(scores, quantile))


def trials_to_reach(
    controller: str, seed: int, space: SearchSpace, score: StandInScore, threshold: float, cap: int
) -> int | None:
    """The 1-based number of the first trial scoring >= ``threshold``; None if ``cap`` trials do not."""
    study = optuna.create_study(direction="maximize", sampler=make_controller(controller, seed))
    for n in range(1, cap + 1):
        trial = study.ask()
        value = score(space.sample(trial))
        study.tell(trial, value)
        if value >= threshold:
            return n
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=7)
    parser.add_argument("--samples", type=int, default=20000, help="random genotypes for the threshold")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    started = time.perf_counter()
    space, score = get_space("nasfpn", cells=args.cells), StandInScore()
    threshold = top_threshold(space, score, args.samples)
    print(f"nasfpn space, {args.cells} cells; top-1% threshold {threshold:.3f} ({args.samples} random necks)")
    print(f"{args.repeats} repeats per controller, cap {args.cap} trials (capped runs count as the cap)\n")

    results: dict[str, list[int | None]] = {}
    for controller in args.controllers.split(","):
        t0 = time.perf_counter()
        results[controller] = [
            trials_to_reach(controller, seed, space, score, threshold, args.cap)
            for seed in range(args.repeats)
        ]
        print(f"  {controller}: {time.perf_counter() - t0:.0f} s", flush=True)

    def counts(controller: str) -> list[int]:
        return [n if n is not None else args.cap for n in results[controller]]

    header = ("controller", "median", "mean", "capped", "median/random", "mean/random")
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(header, WIDTHS)))
    for controller in results:
        median, mean = statistics.median(counts(controller)), statistics.mean(counts(controller))
        row = [controller, f"{median:.1f}", f"{mean:.1f}", str(sum(n is None for n in results[controller]))]
        if "random" in results:
            row.append(f"{median / statistics.median(counts('random')):.2f}")
            row.append(f"{mean / statistics.mean(counts('random')):.2f}")
        print(" ".join(f"{cell:>{w}}" for cell, w in zip(row, WIDTHS)))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
