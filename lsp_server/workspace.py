"""The editor's workspace folders as context: indexed in the background, kept current as files change.

The folders come from `initialize` (`workspaceFolders`, else `rootUri`/`rootPath`). Once the engine
is loaded (its tokenizer tokenizes the files) a thread walks and indexes them and hands the index
to the engine (`Engine.use_workspace`). Edits reach it through one worker thread: a document's
live text after `didChange` (coalesced: a burst of keystrokes re-indexes once, DEBOUNCE_S after the
last), its text on `didSave`, and the file on disk for `workspace/didChangeWatchedFiles`. Each is
a small overlay re-sort (engine/workspace.py), so the index follows within a second or two while
completion requests never wait for it: they read whatever snapshot is current.

What enters the index is decided by the server's `Exclusions` (project_files/): an excluded
document's text is never queued, and `use_exclusions` (new settings, a changed ignore file) drops
every indexed file the rules now exclude before it returns.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from pygls.uris import to_fs_path

from project_files.exclusions import Exclusions

log = logging.getLogger("lsp_server.workspace")

DEBOUNCE_S = 0.3        # keystrokes closer than this re-index a document once
DELETED = object()      # a pending update that removes the file
FROM_DISK = None        # a pending update that reads the file


def folders_of(params) -> list[Path]:
    """The workspace folders an `initialize` request names (local paths only)."""
    uris = [f.uri for f in (params.workspace_folders or [])]
    if not uris and params.root_uri:
        uris = [params.root_uri]
    paths = [to_fs_path(u) for u in uris]
    if not uris and params.root_path:
        paths = [params.root_path]
    return [Path(p) for p in paths if p and Path(p).is_dir()]


class EditorWorkspace:
    """One per language server. `attach(engine)` starts indexing; the handlers call the rest."""

    def __init__(self, max_files: int | None = None, max_total_bytes: int | None = None):
        self.limits = {k: v for k, v in (("max_files", max_files), ("max_total_bytes", max_total_bytes))
                       if v is not None}
        self.folders: list[Path] = []
        self.exclusions = Exclusions(global_excludes=None)   # the server's, from `set_folders`
        self.project = None                 # project_files.indexing.ProjectIndex once built
        self._engine = None
        self._pending: dict[str, tuple[float, object]] = {}   # path -> (due time, text | FROM_DISK | DELETED)
        self._wake = threading.Condition()
        self._stopped = False
        self._worker: threading.Thread | None = None
        self.updates = 0                                        # updates applied (tests, stats)

    # ---- lifecycle ---------------------------------------------------------------------------
    def set_folders(self, folders: list[Path], exclusions: Exclusions) -> None:
        self.folders = [f.resolve() for f in folders]
        self.exclusions = exclusions

    def use_exclusions(self, exclusions: Exclusions) -> threading.Thread | None:
        """Apply new rules: every indexed file they exclude leaves the index, in a thread started
        now (~50 us a file: a big workspace must not hold up the editor). Returns that thread."""
        self.exclusions = exclusions
        project = self.project
        if project is None:
            return None
        project.exclusions = exclusions
        with self._wake:
            for path in [p for p in self._pending if exclusions.excluded(p)]:
                self._pending[path] = (0.0, DELETED)

        def prune() -> None:
            removed = project.prune()
            log.info("exclusions applied: %d files left the workspace index", removed)

        thread = threading.Thread(target=prune, name="workspace-prune", daemon=True)
        thread.start()
        return thread

    def attach(self, engine) -> None:
        """Index the folders with this engine's tokenizer, in a background thread."""
        if self._engine is not None or not self.folders or engine is None:
            return
        self._engine = engine
        threading.Thread(target=self._build, name="workspace-index", daemon=True).start()

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()

    @property
    def ready(self) -> bool:
        return self.project is not None and self.project.index.ready.is_set()

    def stats(self) -> dict:
        if self.project is None:
            return {"folders": [str(f) for f in self.folders], "ready": False}
        index = self.project.index
        return {"folders": [str(f) for f in self.folders], "ready": self.ready, "files": len(index.files()),
                "tokens": index.n_tokens, "bytes": index.nbytes, "updates": self.updates,
                "build_s": round(index.build_seconds, 2), "skipped": self.project.report.skipped}

    # ---- events ------------------------------------------------------------------------------
    def file_of(self, uri: str) -> str | None:
        """The file a document is, when it is one, by the name the editor uses (a link is followed
        only when the index takes it, so that both the link and its target are checked)."""
        path = to_fs_path(uri)
        return os.path.abspath(path) if path else None

    def changed(self, uri: str, text: str) -> None:
        self._schedule(uri, text, DEBOUNCE_S)

    def saved(self, uri: str, text: str | None) -> None:
        self._schedule(uri, text if text is not None else FROM_DISK, 0.0)

    def watched(self, uri: str, deleted: bool) -> None:
        self._schedule(uri, DELETED if deleted else FROM_DISK, 0.0)

    def _schedule(self, uri: str, update, delay: float) -> None:
        path = self.file_of(uri)
        if path is None or not self.folders:
            return
        if update is not DELETED and self.exclusions.excluded(path):
            update = DELETED        # its text never waits in the queue; a copy indexed before leaves
        with self._wake:
            self._pending[path] = (time.monotonic() + delay, update)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="workspace-updates", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    # ---- threads -----------------------------------------------------------------------------
    def _build(self) -> None:
        # Imported here: in remote mode the language server never loads the engine (nor torch).
        from project_files.indexing import ProjectIndex
        from project_files.walk import WalkSettings

        engine = self._engine
        try:
            project = ProjectIndex(self.folders, engine.tokenizer, self.exclusions, WalkSettings(**self.limits))
            project.build()
            project.exclusions = self.exclusions
            project.prune()         # the rules may have changed while it was built
        except Exception:
            log.exception("indexing the workspace failed; completions go on without it")
            return
        self.project = project
        engine.use_workspace(project.index)
        log.info("workspace index ready: %d files, %d tokens in %.1f s", len(project.index.files()),
                 project.index.n_tokens, project.index.build_seconds)
        with self._wake:
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stopped:
                    now = time.monotonic()
                    due = [p for p, (at, _) in self._pending.items() if at <= now]
                    if due and self.ready:
                        break
                    timeout = min((at for at, _ in self._pending.values()), default=now + 1.0) - now
                    self._wake.wait(timeout=max(0.05, timeout) if self.ready or not self._pending else 0.5)
                if self._stopped:
                    return
                batch = [(p, self._pending.pop(p)[1]) for p in due]
            for path, update in batch:
                try:
                    if update is DELETED:
                        self.project.remove(path)
                    else:
                        self.project.update(path, update)  # asks the exclusions again
                    self.updates += 1
                except Exception:
                    log.exception("re-indexing a file failed")
