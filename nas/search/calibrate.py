"""Before a search on one's own data: can the proxy be trusted there, and at which budget?

A search is only as good as its proxy, and whether a short training ranks necks as a long one
does depends on the data, the backbone and the image size. Calibration measures it:

0. ``survey`` reads the training split first: images, classes, box sizes at the proxy's image
   size; it proposes the image size at which the smallest tenth of the boxes spans one stride of
   P3, and says when the split is too small to pretrain a backbone on.
1. A fixed panel of necks (``panel``: no fusion, FPN, PANet, BiFPN, NAS-FPN and a few points of
   the search space drawn at random, seeded) trains at every candidate budget, ``seeds`` seeds
   each, and once (seed 0) at a longer reference budget with the backbone trainable -- as Ray
   tasks through ``nas.search.compare.run_jobs``, so finished trainings are kept and a stopped one goes on.
2. ``assess`` gives each budget its largest seed std, its separation (FPN - no fusion, Welch's
   one-sided p in the direction the reference has them), Kendall's tau_b of its ranking against
   the reference's, and its seconds a trial; ``choose`` takes the cheapest budget with tau_b >=
   ``TAU_MIN`` and separation beyond seed noise (p < ``ALPHA``), or none, and ``verdict`` says
   which in plain words and, when none, what to change.
3. ``write_calibration`` writes ``calibration.md``, ``calibration.csv``, ``calibration.png`` and
   ``calibration.json``, which ``nasfpn search --budget calibrated --calibration DIR`` reads
   (``calibrated_budget``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from nas.data.coco import CocoDetection
from nas.errors import UsageError
from nas.proxy.necks import NeckSpec
from nas.search.compare import ALPHA, Entry, baseline_entry, digest, welch_p
from nas.settings import ProxySettings, budget_of
from nas.tables import format_table

TAU_MIN = 0.6  # a ranking this close to the reference's is one to search with
P3_STRIDE = 8
# The embedded data's 4096 training scenes pretrain a ResNet-10 well; 300 aerial tiles did not
# (its loss fell to 0.02: memorised). Below this many images we say so before training.
MIN_PRETRAIN_IMAGES = 1000
PANEL = ("nofusion", "fpn", "panet", "bifpn", "nasfpn")
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Survey:
    """What the training split holds, seen at the proxy's image size."""

    images: int
    classes: int
    boxes: int
    image_size: int
    small_side: float  # the 10th percentile of box sides (sqrt of area) once letterboxed, px
    proposed_size: int  # the image size at which ``small_side`` would span one P3 stride
    too_few_to_pretrain: bool

    def lines(self) -> list[str]:
        lines = [
            f"{self.images} training images, {self.classes} classes, {self.boxes} boxes; at "
            f"{self.image_size} px the smallest tenth of the boxes are under {self.small_side:.1f} px"
        ]
        if self.proposed_size > self.image_size:
            lines.append(
                f"under one stride of P3 ({P3_STRIDE} px): the proxy cannot place them -- "
                f"--image-size {self.proposed_size} would"
            )
        if self.too_few_to_pretrain:
            lines.append(
                f"{self.images} images are few to pretrain a backbone on from scratch (it memorises "
                "them): give --backbone-checkpoint, or --train-backbone"
            )
        return lines


def survey(train: CocoDetection, settings: ProxySettings) -> Survey:
    """The training split's size, classes and box sizes at ``settings.image_size``."""
    images = train.coco.imgs
    sides = [
        math.sqrt(a["bbox"][2] * a["bbox"][3])
        * settings.image_size
        / max(images[a["image_id"]]["width"], images[a["image_id"]]["height"])
        for a in train.coco.dataset.get("annotations", [])
        if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0
    ]
    small = float(np.percentile(sides, 10)) if sides else 0.0
    proposed = settings.image_size
    if 0 < small < P3_STRIDE:
        proposed = math.ceil(settings.image_size * P3_STRIDE / small / 32) * 32
    frozen_from_scratch = settings.freeze_backbone and settings.backbone_checkpoint is None
    return Survey(
        images=len(train),
        classes=train.num_categories,
        boxes=len(sides),
        image_size=settings.image_size,
        small_side=small,
        proposed_size=proposed,
        too_few_to_pretrain=frozen_from_scratch and len(train) < MIN_PRETRAIN_IMAGES,
    )


def check_budgets(budgets: Sequence[str], reference: str) -> None:
    """UsageError for an unknown budget, or a reference no longer than every candidate."""
    if not budgets:
        raise UsageError("--budgets: name at least one candidate budget")
    try:
        steps = {name: budget_of(name).steps for name in (*budgets, reference)}
    except ValueError as e:
        raise UsageError(str(e)) from None
    longest = max(budgets, key=steps.__getitem__)
    if steps[reference] <= steps[longest]:
        raise UsageError(
            f"--reference {reference} ({steps[reference]} steps) must be longer than the "
            f"candidate {longest} ({steps[longest]} steps)"
        )


def panel(detector: str, random_points: int, space: Any, seed: int = 0) -> list[Entry]:
    """The reference necks at their papers' repeats, then ``random_points`` points of ``space``
    drawn by Optuna's random sampler with ``seed``, each labelled by its genotype's digest (so a
    kept training is never another genotype's)."""
    import optuna

    entries = [baseline_entry(name, detector) for name in PANEL]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(random_points):
        genotype = space.sample(study.ask())
        key = hashlib.sha256(json.dumps(genotype.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
        entries.append(Entry(f"random {key}", NeckSpec(genotype, space.repeats, space.norm), False))
    return entries


def run_calibration(
    splits: tuple[CocoDetection, CocoDetection],
    settings: ProxySettings,
    budgets: Sequence[str],
    reference: str,
    seeds: int,
    space: Any,
    random_points: int,
    out_dir: Path,
    resources: tuple[int, float, float],
    cache_dir: Path,
    address: str | None = None,
    out: Callable[[str], None] = print,
) -> str:
    """Surveys the data, trains the panel at every budget and at the reference (what is kept in
    ``out_dir/jobs`` is not trained again), writes the files; returns the tables and verdict.

    ``resources``: trainings at a time, CPUs and GPUs of each; ``address``: a Ray cluster to join."""
    from nas.proxy.prepare import prepare_proxy_data
    from nas.search.cluster import ray_cluster
    from nas.search.compare import claim_jobs_folder, run_jobs

    check_budgets(budgets, reference)
    found = survey(splits[0], settings)
    for line in found.lines():
        out(line)
    jsons = (Path(splits[0].annotation_file), Path(splits[1].annotation_file))
    plan = [(replace(settings, budget=b), list(range(seeds))) for b in budgets]
    plan.append((reference_settings(settings, reference), [0]))
    for budget_settings, _ in plan:  # before any work: kept trainings must match
        claim_jobs_folder(out_dir, budget_settings, *jsons)
    data = prepare_proxy_data(*splits, settings, cache_dir)
    trained: dict[str, list[Entry]] = {}
    with ray_cluster(address):
        for budget_settings, budget_seeds in plan:
            entries = panel(settings.detector, random_points, space)
            trainable = data if budget_settings.freeze_backbone else replace(data, features=None)
            run_jobs(entries, budget_seeds, trainable, budget_settings, out_dir, *resources, out=out)
            trained[budget_settings.budget] = entries
    reference_entries = trained.pop(reference)
    return write_calibration(trained, reference, reference_entries, found, settings, *jsons, out_dir)


@dataclass(frozen=True)
class BudgetRow:
    """One candidate budget, measured against the reference."""

    budget: str
    steps: int
    seeds: int
    largest_std: float  # AP points
    separation: float  # FPN - no fusion, AP points
    p: float  # Welch's one-sided, in the reference's direction; 1.0 where no test is possible
    tau: float  # Kendall tau_b of the panel's mean AP against the reference's; nan: undefined
    seconds: float  # a training, mean over the panel's
    trusted: bool


def assess(budget: str, entries: Sequence[Entry], reference: Sequence[Entry]) -> BudgetRow:
    """``budget``'s row from the panel trained at it and the same panel at the reference."""
    by_label = {e.label: e for e in entries}
    ref_ap = {e.label: e.mean("AP") for e in reference}
    labels = [e.label for e in reference]
    fpn, nofusion = by_label["fpn"], by_label["nofusion"]
    forward = ref_ap["fpn"] >= ref_ap["nofusion"]
    better, worse = (fpn, nofusion) if forward else (nofusion, fpn)
    p = welch_p(better.values("AP"), worse.values("AP"))
    tau = float(kendalltau([by_label[k].mean("AP") for k in labels], [ref_ap[k] for k in labels]).statistic)
    largest_std = max(e.std("AP") for e in entries) * 100
    seconds = statistics.fmean(r["seconds"] for e in entries for r in e.runs)
    return BudgetRow(
        budget=budget,
        steps=budget_of(budget).steps,
        seeds=min(len(e.runs) for e in entries),
        largest_std=largest_std,
        separation=(fpn.mean("AP") - nofusion.mean("AP")) * 100,
        p=p,
        tau=tau,
        seconds=seconds,
        # tau_b divides by square roots: an exact 0.6 can come out 0.5999999999999999
        trusted=not math.isnan(tau) and tau >= TAU_MIN - 1e-9 and p < ALPHA,
    )


def choose(rows: Sequence[BudgetRow]) -> BudgetRow | None:
    """The cheapest trusted budget (seconds a trial, then steps), or None."""
    trusted = [r for r in rows if r.trusted]
    return min(trusted, key=lambda r: (r.seconds, r.steps)) if trusted else None


def verdict(
    rows: Sequence[BudgetRow], reference: str, reference_best_ap: float, found: Survey, out_dir: Path
) -> str:
    """The verdict in plain words: the budget to search with, or why none and what to change."""
    chosen = choose(rows)
    if chosen is not None:
        return (
            f"Search at budget {chosen.budget!r}: the cheapest whose ranking agrees with the {reference} "
            f"reference (tau_b {chosen.tau:.2f} >= {TAU_MIN}) and that tells FPN from no fusion beyond "
            f"seed noise (p = {chosen.p:.3f}); {chosen.seconds:.0f} s a training. "
            f"nasfpn search --budget calibrated --calibration {out_dir}"
        )
    best = max(rows, key=lambda r: -2.0 if math.isnan(r.tau) else r.tau)
    lines = [
        f"No candidate budget can be trusted: the closest ranking is at {best.budget!r} (tau_b "
        f"{best.tau:.2f}, needs >= {TAU_MIN}; FPN - no fusion {best.separation:+.1f} AP, p = {best.p:.3f})."
    ]
    changes = []
    if reference_best_ap < 0.05:
        changes.append(
            f"the {reference} reference itself learned little (best AP {reference_best_ap * 100:.1f}): "
            "no ranking means much until the data, image size or backbone change"
        )
    if found.proposed_size > found.image_size:
        changes.append(f"--image-size {found.proposed_size}: a tenth of the boxes are under one P3 stride")
    if found.too_few_to_pretrain:
        changes.append("--backbone-checkpoint or --train-backbone: too few images to pretrain on")
    if best.steps == max(r.steps for r in rows):
        changes.append(f"a budget longer than {best.budget!r}: the longest candidate came closest")
    if changes:
        lines.append("What to change: " + "; ".join(changes) + ".")
    return " ".join(lines)


def write_calibration(
    budgets: dict[str, list[Entry]],
    reference: str,
    reference_entries: list[Entry],
    found: Survey,
    settings: ProxySettings,
    train_json: Path,
    val_json: Path,
    out_dir: Path,
) -> str:
    """Writes calibration.md, .csv, .png and .json into ``out_dir``; returns the verdict."""
    rows = [assess(b, entries, reference_entries) for b, entries in budgets.items()]
    best_ap = max(e.mean("AP") for e in reference_entries)
    text = verdict(rows, reference, best_ap, found, out_dir)
    chosen = choose(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [
        "budget",
        "steps",
        "seeds",
        "largest std",
        "FPN - no fusion",
        "p",
        "tau_b",
        "s a training",
        "trusted",
    ]
    table = [
        [
            r.budget,
            str(r.steps),
            str(r.seeds),
            f"{r.largest_std:.2f}",
            f"{r.separation:+.2f}",
            f"{r.p:.4f}",
            f"{r.tau:.2f}",
            f"{r.seconds:.0f}",
            "yes" if r.trusted else "no",
        ]
        for r in rows
    ]
    labels = [e.label for e in reference_entries]
    necks = [["neck", *budgets, f"{reference} (reference, backbone trained)"]]
    for label in labels:
        cells = [_entry(entries, label) for entries in budgets.values()]
        ref = _entry(reference_entries, label)
        necks.append(
            [
                label,
                *(f"{e.mean('AP') * 100:.1f} ± {e.std('AP') * 100:.1f}" for e in cells),
                f"{ref.mean('AP') * 100:.1f}",
            ]
        )
    markdown = [
        f"# Calibration: {settings.detector}, {settings.backbone}, {settings.image_size} px",
        "",
        *(f"- {line}" for line in found.lines()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in table),
        "",
        "AP (points) of each neck, mean ± std over seeds; the reference: seed 0.",
        "",
        "| " + " | ".join(necks[0]) + " |",
        "|" + "---|" * len(necks[0]),
        *("| " + " | ".join(r) + " |" for r in necks[1:]),
        "",
        f"**{text}**",
        "",
    ]
    (out_dir / "calibration.md").write_text("\n".join(markdown))
    with (out_dir / "calibration.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["budget", "steps", "seeds", "largest_std", "separation", "p", "tau_b", "seconds", "trusted"]
        )
        for r in rows:
            writer.writerow(
                [r.budget, r.steps, r.seeds, round(r.largest_std, 4), round(r.separation, 4), round(r.p, 6)]
                + [round(r.tau, 4), round(r.seconds, 2), r.trusted]
            )
    record = {
        "budget": chosen.budget if chosen is not None else None,
        "reference": reference,
        "settings": {k: v for k, v in asdict(settings).items() if k != "budget"},
        "data": {"train": digest(train_json), "val": digest(val_json)},
        "rows": [asdict(r) for r in rows],
        "verdict": text,
    }
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(record, indent=2))
    _plot(budgets, reference, reference_entries, out_dir / "calibration.png")

    return "\n".join([format_table([header, *table]), "", format_table(necks), "", text])


def _plot(
    budgets: dict[str, list[Entry]], reference: str, reference_entries: list[Entry], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*budgets, f"{reference}\n(reference)"]
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 4))
    for ref in reference_entries:
        aps = [_entry(entries, ref.label).mean("AP") * 100 for entries in budgets.values()]
        ax.plot(columns, [*aps, ref.mean("AP") * 100], marker="o", label=ref.label)
    ax.set_ylabel("COCO AP (points)")
    ax.set_title("each neck's AP at each budget and at the long reference")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibrated_budget(folder: Path, settings: ProxySettings, train_json: Path, val_json: Path) -> str:
    """The budget the calibration in ``folder`` chose for a search with ``settings`` on this data;
    UsageError when there is none, or the calibration was made with other settings or data."""
    path = Path(folder) / CALIBRATION_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (run nasfpn calibrate --out {folder} first)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from None
    if record.get("budget") is None:
        raise UsageError(f"{path}: the calibration trusts no budget: {record.get('verdict', '')}")
    asked = {k: v for k, v in asdict(settings).items() if k != "budget"}
    for key, value in asked.items():
        if record["settings"].get(key) != value:
            raise UsageError(
                f"{path}: calibrated with {key} {record['settings'].get(key)!r}, "
                f"the search asks for {value!r}"
            )
    if record["data"] != {"train": digest(train_json), "val": digest(val_json)}:
        raise UsageError(f"{path}: calibrated on other data than {train_json}")
    return record["budget"]


def reference_settings(settings: ProxySettings, reference: str) -> ProxySettings:
    """The long reference: ``reference``'s budget with the backbone trained in every run."""
    return replace(settings, budget=reference, freeze_backbone=False)


def _entry(entries: Sequence[Entry], label: str) -> Entry:
    return next(e for e in entries if e.label == label)
