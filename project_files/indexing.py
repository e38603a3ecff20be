"""The engine's workspace index of a project, kept to what `Exclusions` allows.

`ProjectIndex` owns the walk, the files' stamps and every way a file enters the engine's token
index (engine/workspace.py): the first build, one file updated from an editor or from disk, a
rescan, and `prune` when the rules change. Each asks the exclusions first. `open_workspace` and
`WorkspaceService` are `code-assistant index` and `serve --workspace`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from .exclusions import Exclusions
from .walk import WalkReport, WalkSettings, in_skipped_folder, is_code_file, read_source, walk_files

log = logging.getLogger("project_files.indexing")


class ProjectIndex:
    """The files under `roots` that `exclusions` allows, in an engine `WorkspaceIndex` (`index`)."""

    def __init__(self, roots: list[str | Path], tokenizer, exclusions: Exclusions | None = None,
                 settings: WalkSettings | None = None, index=None):
        from engine.workspace import WorkspaceIndex, tokenizer_fingerprint

        self.roots = [os.path.realpath(r) for r in roots]
        self.exclusions = exclusions if exclusions is not None else Exclusions(self.roots)
        self.settings = settings or WalkSettings()
        self.index = index if index is not None else WorkspaceIndex(tokenizer.encode, tokenizer_fingerprint(tokenizer))
        self.report = WalkReport()
        # path -> (mtime_ns, size) when last read from disk, indexed or not (a rescan skips it until it changes)
        self.stamps: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()   # one change to the set of files at a time

    # ---- building --------------------------------------------------------------------------
    def build(self, progress: Callable[[int, int], None] | None = None) -> WalkReport:
        """Walk the roots and index every allowed file (blocking: call it from a background thread)."""
        report, stamps = WalkReport(), {}

        def documents():
            for path in walk_files(self.roots, self.exclusions, self.settings, report):
                stamps[path] = _stamp(path)
                if report.files >= self.settings.max_files or report.bytes >= self.settings.max_total_bytes:
                    report.skip("over-cap")
                    continue
                text, reason = read_source(path, self.settings)
                if text is None:
                    report.skip(reason)
                    continue
                report.files += 1
                report.bytes += len(text.encode("utf-8"))
                if progress is not None:
                    progress(report.files, report.bytes)
                yield path, text

        with self._lock:
            self.index.build(documents())
            self.stamps, self.report = stamps, report
        log.info("workspace walk: %d files, skipped %s", report.files, report.skipped)
        return report

    def allows(self, path: str) -> bool:
        """Whether the file at `path` may be indexed (inside a root, a code file, not excluded)."""
        root = next((r for r in self.roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
        if root is None:
            return False
        return (is_code_file(path, self.settings) and not in_skipped_folder(path, root)
                and not self.exclusions.excluded(path))

    def update(self, path: str | Path, text: str | None = None) -> bool:
        """Re-index one file from `text` (an editor's live copy) or from disk; a file gone, excluded
        or unreadable leaves the index. Returns whether the file is now indexed."""
        given = os.path.abspath(path)
        key = os.path.realpath(given)
        given = os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given))
        with self._lock:
            # Both the name the editor uses and the file it leads to must be allowed.
            if not (self.allows(given) and self.allows(key)):
                self.index.remove_file(key)
                return False
            if text is None:
                stamp = _stamp(key)
                text, _ = read_source(key, self.settings) if os.path.isfile(key) else (None, "gone")
                self.stamps[key] = stamp
            elif len(text) > self.settings.max_file_bytes:
                text = None
            if text is None:
                self.index.remove_file(key)
                return False
            self.index.update_file(key, text)
            return True

    def remove(self, path: str | Path) -> None:
        key = os.path.realpath(path)
        with self._lock:
            self.stamps.pop(key, None)
            self.index.remove_file(key)

    def prune(self) -> int:
        """Drop every indexed file the rules now exclude (a settings change, a new ignore rule)."""
        removed = 0
        with self._lock:
            for path in self.index.files():
                if not self.allows(path):
                    self.index.remove_file(path)
                    self.stamps.pop(path, None)
                    removed += 1
        return removed

    def rescan(self) -> int:
        """Re-read files whose modification time or size changed, add new ones, drop deleted and
        newly excluded ones (what `serve --workspace` runs periodically). Returns how many changed."""
        seen, changed = set(), 0
        for path in walk_files(self.roots, self.exclusions, self.settings):
            seen.add(path)
            if self.stamps.get(path) != _stamp(path):
                changed += 1
                self.update(path)
        for path in [p for p in set(self.index.files()) | set(self.stamps) if p not in seen]:
            changed += 1
            self.remove(path)
        return changed

    # ---- files -----------------------------------------------------------------------------
    def save(self, out: str | Path) -> None:
        """The index as one file (`code-assistant index`), with the roots, the user's globs and the
        stamps a rescan needs."""
        self.index.save(out, {"roots": self.roots, "globs": list(self.exclusions.globs),
                              "stamps": {p: list(s) for p, s in self.stamps.items()}})

    @classmethod
    def load(cls, file: str | Path, tokenizer, globs: tuple[str, ...] = (),
             settings: WalkSettings | None = None) -> "ProjectIndex":
        """An index file `save` wrote, caught up with its folders and today's rules by a rescan:
        the globs it was built with and `globs` besides (rules only ever add)."""
        from engine.suffix_index import IndexFormatError
        from engine.workspace import WorkspaceIndex, tokenizer_fingerprint

        index, metadata = WorkspaceIndex.load(file, tokenizer.encode, tokenizer_fingerprint(tokenizer))
        roots, recorded = metadata.get("roots"), metadata.get("globs", [])
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise IndexFormatError(f"{file}: not a workspace index (no roots recorded)")
        if not isinstance(recorded, list) or not all(isinstance(g, str) for g in recorded):
            raise IndexFormatError(f"{file}: the recorded globs are not a list of strings")
        project = cls(roots, tokenizer, Exclusions(roots, [*recorded, *globs]), settings, index)
        project.stamps = {p: tuple(s) for p, s in metadata.get("stamps", {}).items()}
        project.rescan()
        return project


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0


# ---- a server's workspace ----------------------------------------------------------------------
def open_workspace(paths: list[str | Path], tokenizer, globs: tuple[str, ...] = (), settings: WalkSettings | None = None,
                   progress: Callable[[int, int], None] | None = None) -> ProjectIndex:
    """Folders are walked and indexed; a single file is an index `code-assistant index` wrote
    (its folders are then caught up by a rescan under today's rules). Raises ValueError for a mix
    or a missing path."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"workspace path does not exist: {', '.join(missing)}")
    files = [p for p in paths if p.is_file()]
    if files:
        if len(paths) != 1:
            raise ValueError("give either workspace folders or one index file, not both or several files")
        return ProjectIndex.load(files[0], tokenizer, globs, settings)
    project = ProjectIndex(paths, tokenizer, Exclusions(paths, globs), settings)
    project.build(progress)
    return project


class WorkspaceService:
    """`serve --workspace`: the index built (or loaded) in a background thread and handed to the
    engine once ready, then rescanned every `rescan_s` seconds (0: never) until `stop`."""

    def __init__(self, engine, paths: list[str | Path], globs: tuple[str, ...] = (),
                 settings: WalkSettings | None = None, rescan_s: float = 30.0):
        self.engine, self.paths, self.globs, self.settings, self.rescan_s = engine, list(paths), globs, settings, rescan_s
        self.project: ProjectIndex | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workspace", daemon=True)

    def start(self) -> "WorkspaceService":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            self.project = open_workspace(self.paths, self.engine.tokenizer, self.globs, self.settings)
        except Exception as e:  # reported in the log; completions go on without the workspace
            self.error = f"{type(e).__name__}: {e}"
            log.error("workspace index failed: %s", self.error)
            return
        self.engine.use_workspace(self.project.index)
        while self.rescan_s > 0 and not self._stop.wait(self.rescan_s):
            started = time.perf_counter()
            try:
                changed = self.project.rescan()
                if changed:
                    log.info("workspace rescan: %d files changed in %.2f s", changed, time.perf_counter() - started)
            except Exception:
                log.exception("workspace rescan failed")
