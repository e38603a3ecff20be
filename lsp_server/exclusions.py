"""Files that never get completions and never reach a prompt: secrets (`.env`, keys), what git ignores,
and the user's own globs. The server asks `is_excluded` before it completes in a document and before
a document (or a chunk of one) becomes a neighbour snippet.

Git decides what it ignores (`git check-ignore`: nested .gitignore files, .git/info/exclude and the
global excludes file, exactly as git reads them); the answer is cached per path for a while, so a
keystroke never waits for a process.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
import time
from pathlib import PurePosixPath
from typing import Iterable

log = logging.getLogger(__name__)

# Secrets by name. Matched against the file name (and, for patterns with a slash, the relative path).
SECRET_PATTERNS = (
    ".env", ".env.*", "*.env", ".envrc", ".netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx", "*.gpg", "*.asc",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "credentials", "credentials.json", "*.tfvars",
)
GIT_ANSWER_SECONDS = 30.0   # .gitignore edits take effect within this long
GIT_TIMEOUT_SECONDS = 2.0


def _matches(path: str, name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        anchored = pattern.lstrip("/")
        if "/" in anchored.rstrip("/"):
            if PurePosixPath(path).match(anchored) or fnmatch.fnmatch(path, anchored):
                return True
        elif anchored.endswith("/"):
            if anchored.rstrip("/") in PurePosixPath(path).parts[:-1]:
                return True
        elif fnmatch.fnmatch(name, anchored):
            return True
    return False


class Exclusions:
    """`root` is the workspace folder (None: paths are taken as they are)."""

    def __init__(self, root: str | None, user_globs: Iterable[str] = (), use_git: bool = True):
        self.root = os.path.realpath(root) if root else None
        self.user_globs = tuple(user_globs)
        self._git = shutil.which("git") if use_git else None
        self._git_answers: dict[str, tuple[float, bool]] = {}

    def with_globs(self, user_globs: Iterable[str]) -> "Exclusions":
        globs = tuple(user_globs)
        if globs == self.user_globs:
            return self
        updated = Exclusions(self.root, globs, use_git=False)
        updated._git, updated._git_answers = self._git, self._git_answers
        return updated

    def is_excluded(self, path: str | None) -> bool:
        """`path` is a file system path (None or "" for an unsaved buffer: never excluded by name)."""
        if not path:
            return False
        full = os.path.realpath(path)
        relative = os.path.relpath(full, self.root) if self.root and _inside(full, self.root) else full
        relative = relative.replace(os.sep, "/")
        name = os.path.basename(full)
        if _matches(relative, name, SECRET_PATTERNS) or _matches(relative, name, self.user_globs):
            return True
        return self._git_ignores(full)

    def _git_ignores(self, full: str) -> bool:
        if self._git is None:
            return False
        now = time.monotonic()
        cached = self._git_answers.get(full)
        if cached is not None and now - cached[0] < GIT_ANSWER_SECONDS:
            return cached[1]
        directory = os.path.dirname(full)
        while directory and not os.path.isdir(directory):
            directory = os.path.dirname(directory)
        try:
            # Exit 0: ignored; 1: not ignored; 128: not in a repository (nothing is ignored).
            result = subprocess.run([self._git, "check-ignore", "-q", "--", full], cwd=directory or None,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=GIT_TIMEOUT_SECONDS)
            ignored = result.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("git check-ignore failed: %s", error)
            ignored = False
        self._git_answers[full] = (now, ignored)
        return ignored


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
