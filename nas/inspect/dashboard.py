"""``nasfpn dashboard``: a search's study in optuna-dashboard, each trial's cell drawn beside it.

>>> serve(RunFolder("runs/s1"), "127.0.0.1", 8080)   # http://127.0.0.1:8080/dashboard

optuna-dashboard shows the study as it is in its storage -- history, intermediate values,
parameter importances, the Pareto front of a multi-objective study -- and follows a search that
is running: it reads the SQLite file while the search's driver writes it.

What a trial *is* here is its cell, so the dashboard process also *publishes* every trial with
a genotype (a running one too, as soon as it is proposed): a background thread, at start and
every few seconds after, gives each trial not yet published

- two artifacts, ``cell.png`` (``nas.inspect.draw.draw_genotype``) and ``genotype.json``, kept in
  ``runs/NAME/artifacts/`` and shown on the trial's page (the picture inline);
- a note (Markdown, on the trial's page): the space's one-line summary, the picture, the node
  table and the genotype. A note someone already wrote is left alone.

Optuna refuses to change a finished trial, so everything published is recorded in the study's
system attributes, under the keys optuna-dashboard reads for trial artifacts
(``dashboard:artifacts:<trial id>:<artifact id>``) and notes; ``nasfpn:published:<trial id>``
marks a published trial. The search itself needs to do nothing for this.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore

from nas.search.runs import RunFolder

__all__ = ["artifact_store", "make_dashboard_server", "publish_pending", "publish_trial", "serve"]

ARTIFACTS_DIR = "artifacts"
PUBLISHED = "nasfpn:published:"  # + trial id: a study system attribute
REFRESH_SECONDS = 5.0
_ARTIFACT_ATTR = "dashboard:artifacts:"  # + "<trial id>:<artifact id>", as optuna-dashboard reads them
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_reported: set[str] = set()  # reasons already printed by publish_pending

Print = Callable[[str], None]


def artifact_store(run: RunFolder) -> FileSystemArtifactStore:
    """The run's artifact store, ``runs/NAME/artifacts/``."""
    path = run.path / ARTIFACTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def publish_trial(
    study: optuna.Study, trial_number: int, run: RunFolder, store: FileSystemArtifactStore | None = None
) -> bool:
    """Gives trial ``trial_number`` its cell picture, genotype and note, unless it has them or
    has no genotype yet; True if it published now."""
    storage, study_id = study._storage, study._study_id
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    trial = storage.get_trial(trial_id)
    genotype = trial.user_attrs.get("genotype")
    if genotype is None or PUBLISHED + str(trial_id) in storage.get_study_system_attrs(study_id):
        return False
    _publish(study, trial, run, store or artifact_store(run))
    return True


def publish_pending(study: optuna.Study, run: RunFolder, store: FileSystemArtifactStore, err: Print) -> int:
    """Publishes every trial that has a genotype and is not published yet; returns how many.

    A trial that cannot be published now (e.g. the database is busy) is retried next time; its
    reason is printed once.
    """
    published = {
        key[len(PUBLISHED) :]
        for key in study._storage.get_study_system_attrs(study._study_id)
        if key.startswith(PUBLISHED)
    }
    count = 0
    for trial in study.get_trials(deepcopy=False):
        if "genotype" not in trial.user_attrs or str(trial._trial_id) in published:
            continue
        try:
            _publish(study, trial, run, store)
            count += 1
        except Exception as e:  # noqa: BLE001 -- the dashboard goes on; the trial is retried
            reason = f"trial {trial.number}: its cell is not published yet ({type(e).__name__}: {e})"
            if reason not in _reported:
                _reported.add(reason)
                err(f"nasfpn dashboard: {reason.splitlines()[0][:300]}")
    return count


def _publish(study: optuna.Study, trial: optuna.trial.FrozenTrial, run: RunFolder, store: Any) -> None:
    from nas.genotype import Genotype, GenotypeError
    from nas.inspect.draw import draw_genotype, node_table

    storage, study_id, trial_id = study._storage, study._study_id, trial._trial_id
    data = trial.user_attrs["genotype"]
    summary = str(trial.user_attrs.get("summary", ""))
    lines = [f"### Trial {trial.number}: its cell", ""]
    if summary:  # the space's one-line summary, one node a line
        lines += ["```text", *summary.replace("`", "'").split(), "```", ""]
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / "genotype.json"]
        files[0].write_text(json.dumps(data, indent=1) + "\n")
        try:
            genotype = Genotype.from_dict(data)
        except GenotypeError as e:
            genotype = None
            lines += [f"The genotype does not load: `{_code_span(str(e))}`", ""]
        if genotype is not None:
            files.insert(0, Path(tmp) / "cell.png")
            draw_genotype(genotype, files[0], title=f"trial {trial.number}")
        ids = {path.name: _upload(storage, study_id, trial_id, store, path) for path in files}
    if genotype is not None:  # its cell.png was drawn and uploaded
        lines += [
            f"![the cell of trial {trial.number}](/artifacts/{study_id}/{trial_id}/{ids['cell.png']})",
            "",
        ]
        lines += ["```text", node_table(genotype), "```", ""]
    lines += ["Genotype (also the artifact `genotype.json`):", "", "```json", json.dumps(data), "```"]
    _save_note(storage, study_id, trial_id, "\n".join(lines) + "\n")
    storage.set_study_system_attr(study_id, PUBLISHED + str(trial_id), sorted(ids.values()))


def _code_span(text: str) -> str:
    """Text that stays inside a Markdown code span: one line, no backticks."""
    return " ".join(text.split()).replace("`", "'")


def _upload(storage: Any, study_id: int, trial_id: int, store: Any, path: Path) -> str:
    artifact_id = str(uuid.uuid4())
    with path.open("rb") as f:
        store.write(artifact_id, f)
    mimetype = "image/png" if path.suffix == ".png" else "application/json"
    meta = {"artifact_id": artifact_id, "filename": path.name, "mimetype": mimetype, "encoding": None}
    storage.set_study_system_attr(study_id, f"{_ARTIFACT_ATTR}{trial_id}:{artifact_id}", json.dumps(meta))
    return artifact_id


def _save_note(storage: Any, study_id: int, trial_id: int, body: str) -> None:
    from optuna_dashboard._note import note_ver_key, save_note_with_version

    if note_ver_key(trial_id) in storage.get_study_system_attrs(study_id):
        return  # someone wrote a note already
    save_note_with_version(storage, study_id, trial_id, 1, body)


class _Publisher(threading.Thread):
    """Publishes new trials every ``REFRESH_SECONDS`` until stopped."""

    def __init__(self, run: RunFolder, err: Print) -> None:
        super().__init__(name="nasfpn-publisher", daemon=True)
        self.run_folder = run
        self.err = err
        self.stopped = threading.Event()

    def run(self) -> None:
        study = self.run_folder.load_study()  # its own storage object: its own connections
        store = artifact_store(self.run_folder)
        while not self.stopped.is_set():
            try:
                publish_pending(study, self.run_folder, store, self.err)
            except Exception as e:  # noqa: BLE001 -- e.g. the database is locked for a moment
                self.err(f"nasfpn dashboard: could not read the study ({type(e).__name__}: {e})")
            self.stopped.wait(REFRESH_SECONDS)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the dashboard polls: no line per request
        pass


def make_dashboard_server(run: RunFolder, host: str, port: int) -> WSGIServer:
    """optuna-dashboard's WSGI app on the run's study and artifacts, bound to ``host:port``
    (OSError if it cannot be); ``serve_forever()`` serves it."""
    import optuna_dashboard

    config = run.load_config()
    app = optuna_dashboard.wsgi(run.storage_url(config), artifact_store=artifact_store(run))
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)


def serve(run: RunFolder, host: str = "127.0.0.1", port: int = 8080, out: Print = print) -> None:
    """Serves the dashboard of ``run`` until Ctrl-C; OSError if ``host:port`` cannot be bound."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    server = make_dashboard_server(run, host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/dashboard"
    publisher = _Publisher(run, lambda line: print(line, file=sys.stderr, flush=True))
    publisher.start()
    out(f"dashboard of {run.path} at {url} (Ctrl-C stops)")
    if host not in _LOOPBACK:
        out("warning: whoever reaches this address can change and delete the study")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out("dashboard stopped")
    finally:
        publisher.stopped.set()
        server.server_close()
