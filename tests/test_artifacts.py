"""A training's files reach the driver's folder through a Ray actor (nas.search.artifacts)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.search.artifacts import STAGING, FolderWriter, Outbox, folder_writer


def test_an_outbox_sends_what_changed_and_what_was_removed(ray_cluster: str, tmp_path: Path) -> None:
    driver = tmp_path / "run" / "trial_0"
    driver.mkdir(parents=True)
    (driver / "resume.pt").write_bytes(b"saved state")
    (driver / "stale.txt").write_text("not fetched")
    writer = folder_writer()
    with Outbox(writer, str(driver), fetch=["resume.pt", "absent.pt"]) as outbox:
        staging = outbox.path
        assert staging != driver and sorted(p.name for p in staging.iterdir()) == ["resume.pt"]
        (staging / "tb").mkdir()
        (staging / "tb" / "events.1").write_bytes(b"scalars")
        outbox.send()
        assert (driver / "tb" / "events.1").read_bytes() == b"scalars"

        (driver / "tb" / "events.1").write_bytes(b"edited on the driver")  # a marker: not sent again
        (staging / "metrics.json").write_text("{}")
        (staging / "resume.pt").unlink()  # the training finished and removed its state
        outbox.send()
        assert (driver / "tb" / "events.1").read_bytes() == b"edited on the driver"
        assert (driver / "metrics.json").read_text() == "{}"
        assert not (driver / "resume.pt").exists()
        assert (driver / "stale.txt").exists()  # never the outbox's: left alone

        time.sleep(0.01)
        (staging / "metrics.json").write_text('{"AP": 1}')  # rewritten: sent again
        outbox.send()
        assert (driver / "metrics.json").read_text() == '{"AP": 1}'
    assert not staging.exists()


def test_staging_folders_left_behind_go_when_the_next_opens(ray_cluster: str, tmp_path: Path) -> None:
    writer = folder_writer()
    first = Outbox(writer, str(tmp_path / "a"))  # never left, as a trial the scheduler stopped
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = STAGING / f"{dead.stdout.strip()}-x"  # a worker process killed with its folder
    orphan.mkdir(parents=True)
    alive = STAGING / f"{os.getppid()}-x"  # another process's, still training
    alive.mkdir()
    with Outbox(writer, str(tmp_path / "b")) as second:
        assert not first.path.exists() and not orphan.exists() and second.path.is_dir()
    assert alive.is_dir()
    alive.rmdir()


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd"])
def test_the_writer_refuses_a_name_outside_its_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a file name inside"):
        FolderWriter().update(str(tmp_path), {name: b"x"})
