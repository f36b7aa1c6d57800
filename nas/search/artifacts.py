"""A training's files reach the driver's run folder through Ray, whatever node trains it.

A search's trials and a comparison's trainings run on any node of the Ray cluster, but
``status``, ``report``, ``export`` and ``compare`` read their files (``metrics.json``,
``genotype.json``, ``checkpoint.pt``, TensorBoard scalars, ``resume.pt``) in the run folder on the
driver's machine. So a training writes into a staging folder on its own node (``Outbox``), and
whenever its files change -- an evaluation, a saved state, the final files -- sends what changed
to ``FolderWriter``, a Ray actor pinned to the driver's node, which writes it into the run folder
(and removes what the training removed). No shared disk is needed; where the run folder is one,
nothing changes but a copy. A training that resumes first fetches its saved state from there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nas.search.runs import process_alive

STAGING = Path(tempfile.gettempdir()) / "nasfpn-staging"  # on each node: PID-TOKEN per training


class FolderWriter:
    """Writes and reads files under folders of the driver's machine; a Ray actor (``folder_writer``)."""

    def update(self, folder: str, files: dict[str, bytes], removed: Iterable[str] = ()) -> None:
        """Writes ``files`` (relative name -> content) into ``folder``, each replaced atomically,
        and removes the ``removed`` names."""
        root = Path(folder)
        for name, content in files.items():
            path = _inside(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(content)
            os.replace(partial, path)
        for name in removed:
            _inside(root, name).unlink(missing_ok=True)

    def read(self, folder: str, names: Iterable[str]) -> dict[str, bytes]:
        """The named files of ``folder`` that exist."""
        root = Path(folder)
        return {name: _inside(root, name).read_bytes() for name in names if _inside(root, name).is_file()}


def folder_writer() -> Any:
    """A ``FolderWriter`` actor on this process's node (needs an open Ray session)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(FolderWriter).options(num_cpus=0, scheduling_strategy=here).remote()


class Outbox:
    """A staging folder on this node for the files of ``folder`` on the driver's machine.

    ``path`` is where the training writes; ``send()`` sends what changed since the last send.
    ``fetch`` names files to copy from ``folder`` first (a saved state to resume from). Used as a
    context manager, it removes the staging folder on leaving. Tune never resumes a trial after
    its last report, or one its scheduler stopped, so a worker process can leave one behind:
    each new ``Outbox`` removes the others of its own process and those of processes gone.
    """

    def __init__(self, writer: Any, folder: str, fetch: Iterable[str] = ()) -> None:
        import ray

        self.writer = writer
        self.folder = folder
        _remove_left_behind()
        STAGING.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=STAGING))
        for name, content in ray.get(writer.read.remote(folder, list(fetch))).items():
            (self.path / name).write_bytes(content)
        self._sent = self._stamps()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def send(self) -> None:
        """Sends the files written or changed since the last send; removes those deleted."""
        import ray

        stamps = self._stamps()
        changed = {
            name: (self.path / name).read_bytes()
            for name, stamp in stamps.items()
            if self._sent.get(name) != stamp
        }
        removed = [name for name in self._sent if name not in stamps]
        if changed or removed:
            ray.get(self.writer.update.remote(self.folder, changed, removed))
        self._sent = stamps

    def _stamps(self) -> dict[str, tuple[int, int]]:
        return {
            path.relative_to(self.path).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in self.path.rglob("*")
            if path.is_file() and not path.name.endswith(".partial")
        }


def _remove_left_behind() -> None:
    """Removes the staging folders of this process (their files were sent) and of dead ones."""
    for path in STAGING.glob("*-*"):
        pid = int(path.name.split("-")[0])
        if pid == os.getpid() or not process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _inside(root: Path, name: str) -> Path:
    path = root / name
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise ValueError(f"{name!r}: not a file name inside {root}")
    return path
