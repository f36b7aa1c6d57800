"""A fair comparison: the top found cells and the hand-designed baselines, one recipe, same seeds.

Every neck is trained in the run's proxy detector (its settings, the budget asked for) once per
seed, as Ray tasks -- ``workers`` at a time, each with its CPU/GPU share -- on the data prepared
once and shared through Ray's object store. A job whose ``metrics.json`` exists is not rerun and
one that was cut short goes on from its last saved state (``nas.proxy.resume``), so an interrupted
comparison resumes. Results: ``compare.md``, ``compare.csv`` and ``compare.png``
in ``runs/NAME/compare/``.

A baseline is a fixed neck or a genotype file, optionally with a RoI mode for the two-stage
proxy: ``fpn@panet`` is FPN with PANet's adaptive feature pooling (``nas.proxy.roi``), so one comparison
can set RoI modes side by side.

Costs (params, FLOPs, single-thread CPU latency; GPU latency too when a GPU is present) are
measured once per neck in the calling process before any training starts, so every row's
latency is taken under the same conditions and not beside a running training.

Beyond seed noise: a found cell beats a baseline when Welch's one-sided t-test on the per-seed
AP rejects "not better" at p < 0.05 (unequal variances; seeds are not paired because a seed
fixes different initial weights for different necks).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scipy.stats import ttest_ind

from nas.errors import UsageError
from nas.genotype import Genotype
from nas.nets.backbone import backbone_widths
from nas.proxy.data import ProxyData
from nas.proxy.evaluate import METRICS
from nas.proxy.necks import NeckSpec, resolve_neck
from nas.proxy.profile import profile_neck
from nas.proxy.resume import RESUME_FILE, ResumeFile
from nas.proxy.train import roi_mode, training_key
from nas.search.artifacts import Outbox, folder_writer
from nas.search.cluster import SharedObject, ray_cluster
from nas.search.runs import COST_IMAGE_SIZE, RunFolder
from nas.settings import ROI_MODES, ProxySettings
from nas.tables import format_table
from search_spaces import get_space

ALPHA = 0.05

INPUTS_FILE = "inputs.json"  # in OUT/jobs/BUDGET: the settings and data its trainings used
Print = Callable[[str], None]


def welch_p(better: Sequence[float], worse: Sequence[float]) -> float:
    """Welch's t-test, one-sided: p for "``better``'s mean is not above ``worse``'s". 1.0 where
    nothing can be tested (a sample of one); two constant samples are told apart by their means."""
    if len(better) < 2 or len(worse) < 2:
        return 1.0
    if statistics.stdev(better) == 0 and statistics.stdev(worse) == 0:  # Welch's t divides by 0
        return 0.0 if statistics.fmean(better) > statistics.fmean(worse) else 1.0
    return float(ttest_ind(better, worse, equal_var=False, alternative="greater").pvalue)


@dataclass
class Entry:
    """One neck of the comparison and its per-seed metrics."""

    label: str
    neck: NeckSpec
    found: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        """``metric`` of every run that has it (a size class with no boxes has no AP)."""
        return [r[metric] for r in self.runs if metric in r]

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.values(metric))

    def std(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def points(self, metric: str) -> str:
        """The mean in AP points for a table, "-" where no run has the metric."""
        return f"{self.mean(metric) * 100:.1f}" if self.values(metric) else "-"


def baseline_entry(text: str, detector: str, roi: str | None = None) -> Entry:
    """The baseline ``NECK`` or ``NECK@ROI`` (a RoI mode of ``nas.proxy.roi``, two-stage detector only).

    Its RoI mode: the suffix, else ``roi`` (an explicit ``--roi``), else the neck's own (AugFPN's
    soft), else the proxy's. GenotypeError for an unknown neck, ValueError for a bad suffix.
    """
    name, at, mode = text.partition("@")
    if at and mode not in ROI_MODES:
        raise ValueError(f"{text}: unknown RoI mode {mode!r} (known: {', '.join(ROI_MODES)})")
    if at and detector != "fasterrcnn":
        raise ValueError(f"{text}: a RoI mode applies to the two-stage detector only (--detector fasterrcnn)")
    neck = resolve_neck(name)
    return Entry(text, replace(neck, roi=mode or roi or neck.roi), False)


def set_repeats(items: list[Entry], repeats: dict[str, int]) -> None:
    """Gives the baselines named in ``repeats`` (as in ``--baselines``) that many cell repeats; the
    label says so (``fpn x3``), and so the folder its trainings are kept in. ValueError names a
    neck that is not a baseline of the comparison."""
    labels = {e.label: e for e in items if not e.found}
    for name, count in repeats.items():
        if name not in labels:
            raise ValueError(f"{name}: not a baseline of this comparison (baselines: {', '.join(labels)})")
        entry = labels[name]
        if count != entry.neck.repeats:
            entry.neck = replace(entry.neck, repeats=count)
            entry.label = f"{name} x{count}"


def matched_repeats(items: list[Entry], settings: ProxySettings) -> dict[str, int]:
    """Per baseline, the repeats whose neck FLOPs come nearest the reference's, as EfficientDet
    compares necks (Tan et al. 2020, Table 5: each repeated to similar cost). The reference is
    the first found cell, else the first baseline. A neck's FLOPs grow linearly with its repeats
    (every repeat is the same cell on the same maps), so two builds of each give the line."""
    widths = backbone_widths(settings.backbone)

    def flops(neck: NeckSpec, repeats: int) -> float:
        built = replace(neck, repeats=repeats)
        return profile_neck(built, widths, settings.width, COST_IMAGE_SIZE, settings.backbone)["flops"]

    reference = next((e for e in items if e.found), items[0])
    target = flops(reference.neck, reference.neck.repeats)
    matched = {}
    for entry in items:
        if entry.found or entry is reference:
            continue
        one, two = flops(entry.neck, 1), flops(entry.neck, 2)
        per_repeat = max(two - one, 1.0)
        matched[entry.label] = max(1, round((target - one) / per_repeat) + 1)
    return matched


def entries(run: RunFolder, top: int, baselines: Sequence[str]) -> list[Entry]:
    """The ``top`` completed trials by AP (built as the search built them) and the baselines
    (``baseline_entry``) on the run's proxy."""
    from optuna.trial import TrialState

    config = run.load_config()
    space = get_space(config.space, **config.space_options)
    trials = [
        t
        for t in run.load_study().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "AP" in t.user_attrs
    ]
    trials.sort(key=lambda t: t.user_attrs["AP"], reverse=True)
    found = [
        Entry(
            f"trial {t.number}",
            NeckSpec(Genotype.from_dict(t.user_attrs["genotype"]), space.repeats, space.norm),
            True,
        )
        for t in trials[:top]
    ]
    return found + [baseline_entry(name, config.proxy_settings.detector) for name in baselines]


def claim_jobs_folder(out_dir: Path, settings: ProxySettings, train_json: Path, val_json: Path) -> None:
    """Records what the trainings in ``out_dir/jobs/BUDGET`` are trained with, or checks it.

    Finished trainings there are reused by any later comparison into ``out_dir``, so that one
    must ask for the same proxy settings and data (told by its annotation files' digests);
    UsageError names the first difference. Checked before any work starts.
    """
    inputs = {
        **{f"settings.{key}": value for key, value in asdict(settings).items()},
        "data.train": digest(train_json),
        "data.val": digest(val_json),
    }
    path = out_dir / "jobs" / settings.budget / INPUTS_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(inputs, indent=2))
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e}); remove it if its trainings are yours to reuse") from None
    for key, value in inputs.items():
        if recorded.get(key) != value:
            raise UsageError(
                f"{path}: the trainings kept in {path.parent} used {key} {recorded.get(key)!r}, this "
                f"comparison asks for {value!r}: give another --out, or remove {path.parent}"
            )


def digest(path: Path) -> str:
    """A short digest of a file's bytes: which annotation file trainings were made on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def measure_costs(items: list[Entry], settings: ProxySettings) -> None:
    """Each neck's params, FLOPs and CPU latency (``nas.search.trial.neck_costs``), one after another."""
    from nas.search.trial import neck_costs

    for entry in items:
        entry.costs = neck_costs(entry.neck, settings, COST_IMAGE_SIZE)


def run_jobs(
    items: list[Entry],
    seeds: Sequence[int],
    data: ProxyData,
    settings: ProxySettings,
    out_dir: Path,
    workers: int,
    cpus: float,
    gpus: float,
    address: str | None = None,
    out: Print = print,
) -> None:
    """Trains every (entry, seed) not trained yet, ``workers`` at a time on Ray (the cluster at
    ``address``, or the session open in this process, or a local one)."""
    import ray

    out_dir = out_dir.resolve()  # the tasks may run in another working folder

    def job_dir(entry: Entry, seed: int) -> Path:
        # Keyed by the RoI mode too: ``augfpn`` trains with soft RoIs, or with fpn under --roi fpn.
        roi = roi_mode(entry.neck, settings)
        name = re.sub(r"@\w+", "", entry.label.replace(" ", "-")) + (f"@{roi}" if roi else "")
        return out_dir / "jobs" / settings.budget / name / f"seed{seed}"

    @ray.remote
    def train(
        neck: NeckSpec, seed: int, path: str, data: SharedObject[ProxyData], threads: int, folders: Any
    ) -> dict[str, Any]:
        import torch

        from nas.proxy.train import train_proxy

        torch.set_num_threads(threads)
        outbox = Outbox(folders, path, fetch=[RESUME_FILE])
        return train_proxy(
            neck,
            data.get(),
            settings,
            seed=seed,
            out_dir=outbox.path,
            progress=False,
            files_changed=outbox.send,
        )

    pending = []
    for entry in items:
        for seed in seeds:
            done = job_dir(entry, seed) / "metrics.json"
            if done.is_file():  # written last, so the job finished
                entry.runs.append(json.loads(done.read_text())["metrics"])
                continue
            pending.append((entry, seed))
    if not pending:
        return
    with ray_cluster(address):
        shared = SharedObject(data)
        folders = folder_writer()
        threads = max(1, int(cpus))
        remote = train.options(num_cpus=cpus, num_gpus=gpus)
        queue = list(pending)
        running: dict[ray.ObjectRef, tuple[Entry, int]] = {}
        total, finished = len(pending), 0
        resumed = sum(
            ResumeFile(
                job_dir(entry, seed) / RESUME_FILE, training_key(entry.neck, data, settings, seed)
            ).step
            > 0
            for entry, seed in pending
        )
        out(
            f"budget {settings.budget}: {total} of {len(items) * len(seeds)} trainings to run "
            f"({len(items)} necks x {len(seeds)} seeds), {workers} at a time"
            + (f"; {resumed} go on from their saved state" if resumed else "")
        )
        try:
            while queue or running:
                while queue and len(running) < workers:
                    entry, seed = queue.pop(0)
                    ref = remote.remote(entry.neck, seed, str(job_dir(entry, seed)), shared, threads, folders)
                    running[ref] = (entry, seed)
                ready, _ = ray.wait(list(running), num_returns=1)
                entry, seed = running.pop(ready[0])
                result = ray.get(ready[0])
                entry.runs.append(result)
                finished += 1
                out(f"  [{finished}/{total}] {entry.label} seed {seed}: AP {result['AP'] * 100:.1f}")
        except KeyboardInterrupt:
            for ref in running:  # on a joined cluster they would train on after this process stops
                ray.cancel(ref, force=True)
            raise


def verdicts(items: list[Entry]) -> list[str]:
    """Per baseline: does the best found cell beat it beyond seed noise?"""
    found = [e for e in items if e.found]
    if not found:
        return []
    best = max(found, key=lambda e: e.mean("AP"))
    lines = []
    for base in (e for e in items if not e.found):
        gain = (best.mean("AP") - base.mean("AP")) * 100
        if len(best.runs) < 2 or len(base.runs) < 2:
            lines.append(f"{best.label} vs {base.label}: {gain:+.1f} AP (one seed: no test possible)")
            continue
        p = welch_p(best.values("AP"), base.values("AP"))
        verdict = "beats it beyond seed noise" if p < ALPHA else "not beyond seed noise"
        lines.append(
            f"{best.label} vs {base.label}: {gain:+.1f} AP, Welch's t-test one-sided p = {p:.3f}: {verdict}"
        )
    return lines


def write_results(items: list[Entry], seeds: Sequence[int], settings: ProxySettings, out_dir: Path) -> str:
    """Writes compare.md, compare.csv and compare.png; returns the table as printed.

    With the two-stage detector the tables say each neck's RoI mode (``nas.proxy.train.roi_mode``)."""
    two_stage = settings.detector == "fasterrcnn"
    gpu = any("gpu_latency_ms" in e.costs for e in items)  # measured only where a GPU is present
    header = [
        "neck",
        *(["RoI"] if two_stage else []),
        "repeats",
        "AP (mean ± std)",
        *METRICS[1:],
        "params",
        "GFLOPs",
        "CPU ms",
        *(["GPU ms"] if gpu else []),
    ]
    rows: list[list[str]] = []
    for e in items:
        label = f"{e.label} (found)" if e.found else e.label
        rows.append(
            [
                label,
                *([roi_mode(e.neck, settings) or "-"] if two_stage else []),
                str(e.neck.repeats),
                f"{e.mean('AP') * 100:.1f} ± {e.std('AP') * 100:.1f}",
                *(e.points(m) for m in METRICS[1:]),
                f"{e.costs['params'] / 1e6:.2f}M",
                f"{e.costs['flops'] / 1e9:.2f}",
                f"{e.costs['latency_ms']:.1f}",
                *([f"{e.costs['gpu_latency_ms']:.2f}"] if gpu else []),
            ]
        )
    lines = [
        f"# Comparison: {settings.detector}, budget {settings.budget}, seeds {', '.join(map(str, seeds))}",
        "",
        f"AP in points; every neck {settings.width} channels wide, repeated as its column says; "
        f"costs of the neck alone at {COST_IMAGE_SIZE}x{COST_IMAGE_SIZE}, one CPU thread"
        + (" (GPU: batch 1)." if gpu else "."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        *(f"- {v}" for v in verdicts(items)),
        "",
        f"Test: Welch's one-sided t-test on per-seed AP, alpha {ALPHA}.",
    ]
    markdown = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(markdown)
    with (out_dir / "compare.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "neck",
                "found",
                "roi",
                "repeats",
                "width",
                "seeds",
                *(f"{m}_mean" for m in METRICS),
                "AP_std",
                "params",
                "flops",
                "latency_ms",
                *(["gpu_latency_ms"] if gpu else []),
            ]
        )
        for e in items:
            means = [round(e.mean(m), 5) if e.values(m) else "" for m in METRICS]
            writer.writerow(
                [
                    e.label,
                    e.found,
                    roi_mode(e.neck, settings) or "-",  # a one-stage detector pools no RoIs
                    e.neck.repeats,
                    settings.width,
                    len(e.runs),
                    *means,
                    round(e.std("AP"), 5),
                    e.costs["params"],
                    e.costs["flops"],
                    round(e.costs["latency_ms"], 3),
                    *([e.costs["gpu_latency_ms"]] if gpu else []),
                ]
            )
    _plot(items, out_dir / "compare.png")
    return format_table([header, *rows]) + "\n" + "\n".join(verdicts(items))


def _plot(items: list[Entry], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(items)), 3.5))
    labels = [e.label for e in items]
    means = [e.mean("AP") * 100 for e in items]
    stds = [e.std("AP") * 100 for e in items]
    colours = ["tab:orange" if e.found else "tab:blue" for e in items]
    ax.bar(labels, means, yerr=stds, color=colours, capsize=4)
    for k, e in enumerate(items):
        ax.scatter([k] * len(e.runs), [v * 100 for v in e.values("AP")], color="black", s=8, zorder=3)
    ax.set_ylabel("COCO AP (points)")
    ax.set_title("found cells (orange) and baselines: mean ± std over seeds")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
