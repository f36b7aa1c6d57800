"""One search trial on a Ray Tune worker: genotype -> neck -> cost profile -> proxy training.

The trial reports to Tune after each of the proxy's evaluations (``AP``, the breakdown, the
``evaluation`` count that ASHA's rungs use, the neck's ``params``, ``flops``, ``latency_ms``)
and where it ran: the Ray ``node`` id, the GPU ids Ray gave it (``gpus``, comma-separated), the
torch ``device`` it trained on and when it ``started`` (seconds since the epoch). A trial that
raises -- a NaN loss, out of memory, a graph that does not build -- reports its ``failure``
reason instead of crashing the worker, so the search records it and goes on.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray
import torch
from ray import tune

from nas.genotype import Genotype
from nas.nets.backbone import backbone_widths
from nas.proxy.data import ProxyData
from nas.proxy.device import default_device
from nas.proxy.necks import NeckSpec
from nas.proxy.profile import profile_neck
from nas.proxy.train import train_proxy
from nas.search.artifacts import Outbox
from nas.search.cluster import SharedObject
from nas.settings import ProxySettings


def neck_costs(neck: NeckSpec, settings: ProxySettings, image_size: int) -> dict[str, float]:
    """Parameters, FLOPs and single-thread CPU latency (ms; GPU latency too when a GPU is present)
    of the neck alone at ``image_size`` (``nas.proxy.profile.profile_neck``: a neck that runs the
    backbone, less a plain backbone pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: comparable while other trials share the machine
    try:
        widths = backbone_widths(settings.backbone)
        return profile_neck(neck, widths, settings.width, image_size, settings.backbone, latency=True)
    finally:
        torch.set_num_threads(threads)


def run_trial(
    config: dict[str, Any], data: SharedObject[ProxyData], settings: ProxySettings, folders: Any
) -> None:
    """Tune's function trainable. ``config``: ``genotype`` (dict), ``repeats``, ``norm``,
    ``seed``, ``out_dir`` (on the driver's machine, written by the ``folders`` actor,
    ``nas.search.artifacts``), ``threads``, ``cost_image_size``."""
    torch.set_num_threads(config["threads"])
    start = time.perf_counter()
    evaluations = 0
    costs: dict[str, float] = {}
    placement = _placement()

    def report(step: int, metrics: dict[str, float]) -> None:
        nonlocal evaluations
        evaluations += 1
        elapsed = round(time.perf_counter() - start, 2)
        tune.report(
            {**metrics, **costs, **placement, "evaluation": evaluations, "step": step, "seconds": elapsed}
        )

    try:
        genotype = Genotype.from_dict(config["genotype"])
        neck = NeckSpec(genotype, config["repeats"], config["norm"])
        costs.update(neck_costs(neck, settings, config["cost_image_size"]))
        with Outbox(folders, config["out_dir"]) as outbox:
            train_proxy(
                neck,
                data.get(),
                settings,
                seed=config["seed"],
                out_dir=outbox.path,
                files_changed=outbox.send,
                report=report,
                progress=False,
                costs=costs,
                # No resume.pt: ASHA stops trials without a word, which would leave one in every
                # stopped trial's folder, and a trial is minutes long; the search requeues it.
                save_every=math.inf,
            )
    except Exception as e:  # noqa: BLE001 -- any failure is the trial's outcome, recorded with its reason
        message = str(e).splitlines()[0] if str(e) else ""
        failure = f"{type(e).__name__}: {message}"[:500]
        tune.report({"failure": failure, "AP": 0.0, "evaluation": evaluations, **placement})


def _placement() -> dict[str, Any]:
    """Where this trial runs: Ray node id, the GPU ids Ray gave it, torch's device, start time."""
    context = ray.get_runtime_context()
    return {
        "node": context.get_node_id(),
        "gpus": ",".join(context.get_accelerator_ids().get("GPU", [])),
        "device": default_device().type,
        "started": round(time.time(), 3),
    }
