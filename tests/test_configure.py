"""A search's config from what the user asked: new runs resolved, resumed runs kept as saved."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nas.errors import UsageError
from nas.search.configure import SearchRequest, new_config, resumed_config, search_config
from nas.search.runs import RunFolder, SearchConfig
from nas.settings import ProxySettings


def _splits(root: Path):
    split = SimpleNamespace(annotation_file=root / "a.json", images_dir=root / "images")
    return lambda: (split, split)


def _unread() -> tuple:
    raise AssertionError("a resume without data options must not read the data")


def test_a_new_config_resolves_every_default(tmp_path: Path) -> None:
    config = new_config(SearchRequest(name="n", splits=_splits(tmp_path), cpus_per_trial=0.5))
    assert (config.space, config.controller, config.trials, config.seed) == ("nasfpn", "rl", 20, 0)
    assert config.objective["cost"] is None
    assert config.data["train_json"] == str((tmp_path / "a.json").resolve())
    assert config.proxy == asdict(ProxySettings())
    if not torch.cuda.is_available():
        assert config.gpus_per_trial == 0 and config.workers >= 2  # CPUs / 0.5


def test_a_resume_keeps_the_saved_search_and_takes_new_execution(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    saved = SearchConfig(name="r", controller="tpe", trials=4, workers=1, seed=3, seed_with=("nasfpn",))
    run.save_config(saved)
    request = SearchRequest(
        name="r", splits=_unread, controller="tpe", seed_with="nasfpn", trials=9, workers=2, scheduler="none"
    )
    config = search_config(run, request)
    assert (config.controller, config.seed, config.seed_with) == ("tpe", 3, ("nasfpn",))
    assert (config.trials, config.workers, config.scheduler) == (9, 2, "none")


def test_a_resume_asked_for_another_search_names_every_conflict(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    run.save_config(SearchConfig(name="r", space_options={"cells": 7}, proxy=asdict(ProxySettings())))
    other_data = SimpleNamespace(annotation_file=tmp_path / "b.json", images_dir=tmp_path)
    request = SearchRequest(
        name="r",
        splits=lambda: (other_data, other_data),
        data_given=True,
        space_options={"cells": 9},
        controller="random",
        proxy=ProxySettings(width=32),
    )
    with pytest.raises(UsageError) as refused:
        resumed_config(run, request)
    message = str(refused.value)
    for conflict in ("--space-options", "--controller", "proxy width=32", "the data options"):
        assert conflict in message
    assert "--seed" not in message and "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_shares_need_a_gpu_here_or_a_cluster(tmp_path: Path) -> None:
    asked = SearchRequest(name="g", splits=_splits(tmp_path), gpus_per_trial=0.5, workers=2)
    with pytest.raises(UsageError, match="--gpus-per-trial 0.5: this machine has no GPU"):
        new_config(asked)
    on_cluster = new_config(replace(asked, on_cluster=True))
    assert (on_cluster.gpus_per_trial, on_cluster.workers) == (0.5, 2)
