"""The one owner of "this file never reaches a prompt": every front end asks `Exclusions.reason`
before a file (or a piece of one) enters any index or context.

A file is excluded when any of these says so (the rules are listed for users in docs/privacy.md):
- its name, or a folder above it, looks like a secret (SECRET_NAMES, SECRET_FOLDERS; any case);
- the user's globs (gitignore syntax, relative to the workspace folder that holds the file);
- a `.gitignore` or `.code-assistant-ignore` in its folder or any folder above it up to the top of
  its git work tree (or the workspace folder outside git), `.git/info/exclude`, and git's global
  excludes file (`core.excludesFile`, else $XDG_CONFIG_HOME/git/ignore), each pattern relative
  to the folder of the file that holds it;
- it is a symbolic link (or lies under one) inside a workspace folder that points outside every
  workspace folder, or onto a file one of the rules above excludes.

Git lets a deeper `!pattern` re-include what a higher file ignores; here any file that ignores a
path excludes it (a `!pattern` counts only against the patterns of its own file). That errs
towards keeping a file out. Ignore files are re-read when their modification time or size
changes, so a new rule holds from the next question on.
"""
from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

import pathspec

# Matched against the file's name, lower-cased.
SECRET_NAMES = (
    ".env", ".env.*", "*.env", ".envrc", ".netrc", "_netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials",
    ".htpasswd", ".dockercfg", "*.pem", "*.key", "*.crt", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
    "*.gpg", "*.asc", "*.ppk", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "credentials*", "secrets.*",
    "secret.*", "*.secret", "*.secrets", "*.tfvars", "*.tfstate", "*.tfstate.*", "service-account*.json",
)
_SECRET_NAME = re.compile("|".join(fnmatch.translate(pattern) for pattern in SECRET_NAMES))
# A file under a folder of one of these names is excluded whatever its own name.
SECRET_FOLDERS = frozenset({".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker"})
IGNORE_FILES = (".gitignore", ".code-assistant-ignore")
GIT_TIMEOUT_S = 2.0


class Exclusions:
    """The rules for the workspace folders `roots` and the user's `globs`. Safe to share between
    threads: its caches only ever gain entries that are true for the files' current stamps."""

    def __init__(self, roots: Iterable[str | Path] = (), globs: Iterable[str] = (),
                 global_excludes: Path | None | str = "git"):
        roots = [os.path.abspath(r) for r in roots]
        self.roots = [os.path.realpath(r) for r in roots]
        self._root_names = sorted(set(roots) | set(self.roots))   # as given and resolved
        self.globs = tuple(g for g in globs if g.strip())
        self._globs_spec = pathspec.GitIgnoreSpec.from_lines(self.globs)
        # "git": ask git (or its config files) where the global excludes file is; None: no such file.
        self.global_excludes = global_excludes_file() if global_excludes == "git" else global_excludes
        self._specs: dict[str, tuple[tuple[int, int], pathspec.GitIgnoreSpec | None]] = {}
        self._tops: dict[str, str | None] = {}
        self._chains: dict[str, list[tuple[str, list[str]]]] = {}
        self._changed = [0]     # shared with `with_globs` copies, as the cache is

    def with_globs(self, globs: Iterable[str]) -> "Exclusions":
        """The same rules with other user globs (a settings change); the ignore-file cache is shared."""
        updated = Exclusions.__new__(Exclusions)
        updated.__dict__.update(self.__dict__)
        updated.globs = tuple(g for g in globs if g.strip())
        updated._globs_spec = pathspec.GitIgnoreSpec.from_lines(updated.globs)
        return updated

    def excluded(self, path: str | Path | None) -> bool:
        return self.reason(path) is not None

    def reason(self, path: str | Path | None, walking: bool = False) -> str | None:
        """Why `path` (a file, existing or not) must stay out of every context, or None.
        An unsaved buffer (no path) is never excluded by name. `walking`: the caller walks real
        folders and has checked each with `folder_excluded` (only the file itself is left to check)."""
        if not path:
            return None
        if walking and not os.path.islink(path):
            return self._rules(str(path), folders_checked=True)
        given = os.path.abspath(path)
        target = os.path.realpath(given)
        if _under(given, self._root_names) and self._root_of(target) is None:
            return "outside"        # a link inside a workspace folder that leads out of all of them
        given = os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given))
        why = self._rules(given)
        if why is None and target != given:
            why = self._rules(target)
        return why

    def folder_excluded(self, folder: str | Path) -> bool:
        """Whether every file below `folder` is excluded (the walker then skips it whole)."""
        folder = os.path.abspath(folder)
        if os.path.basename(folder).lower() in SECRET_FOLDERS:
            return True
        return self._by_globs(folder, is_dir=True) or self._by_ignore_files(folder, is_dir=True)

    def changes(self) -> int:
        """How many times an ignore file read before was found changed, every one looked at now.
        A caller without file events polls this and applies the rules again when it grows (any
        question may be the one that finds a change, so a count, not a flag)."""
        for file in list(self._specs):
            self._spec_of(file)
        return self._changed[0]

    # ---- the rules -----------------------------------------------------------------------
    def _rules(self, path: str, folders_checked: bool = False) -> str | None:
        folder, name = os.path.split(path)
        if _SECRET_NAME.match(name.lower()):
            return "secret-name"
        if not folders_checked and any(part.lower() in SECRET_FOLDERS for part in folder.split(os.sep)):
            return "secret-name"
        if self._by_globs(path, is_dir=False):
            return "user-glob"
        if self._by_ignore_files(path, is_dir=False, folders_checked=folders_checked):
            return "ignored"
        return None

    def _by_globs(self, path: str, is_dir: bool) -> bool:
        if not self.globs:
            return False
        root = self._root_of(path)
        relative = os.path.relpath(path, root) if root else path.lstrip(os.sep)
        relative = relative.replace(os.sep, "/") + ("/" if is_dir else "")
        return relative not in ("./", "/") and self._globs_spec.match_file(relative)

    def _by_ignore_files(self, path: str, is_dir: bool, folders_checked: bool = False) -> bool:
        """Any ignore file from the top of the tree down to `path`'s folder ignores `path`, or (unless
        `folders_checked`) a folder on the way."""
        chain = self._chain_of(os.path.dirname(path))
        if not chain:
            return False
        specs = [(base, spec) for base, files in chain for spec in map(self._spec_of, files) if spec is not None]
        if not specs:
            return False
        # Each folder below the top, then the path itself, against the files above it.
        targets = [] if folders_checked else [(base, True) for base, _ in chain[1:]]
        for target, target_is_dir in targets + [(path, is_dir)]:
            for base, spec in specs:
                if len(target) <= len(base) or not target.startswith(base) or target[len(base)] != os.sep:
                    continue
                relative = target[len(base) + 1:].replace(os.sep, "/") + ("/" if target_is_dir else "")
                if spec.match_file(relative):
                    return True
        return False

    def _chain_of(self, folder: str) -> list[tuple[str, list[str]]]:
        """(folder, its ignore files) from the top of the tree down to `folder`; the top's list
        starts with the global excludes file and .git/info/exclude."""
        if folder not in self._chains:
            top = self._top_of(folder)
            chain = []
            if top is not None:
                folders = [folder]
                while folders[-1] != top:
                    folders.append(os.path.dirname(folders[-1]))
                folders.reverse()
                outer = [str(self.global_excludes)] if self.global_excludes else []
                outer.append(os.path.join(top, ".git", "info", "exclude"))
                chain = [(f, (outer if f == top else []) + [os.path.join(f, n) for n in IGNORE_FILES])
                         for f in folders]
            self._chains[folder] = chain
        return self._chains[folder]

    def _spec_of(self, file: str | Path) -> pathspec.GitIgnoreSpec | None:
        file = str(file)
        stamp = _stamp(file)
        cached = self._specs.get(file)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if cached is not None:
            self._changed[0] += 1
        spec = None
        if stamp[1] > 0:
            try:
                lines = Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
                spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
            except OSError:
                spec = None
        self._specs[file] = (stamp, spec)
        return spec

    def _top_of(self, folder: str) -> str | None:
        """The top of the git work tree holding `folder`, else the workspace folder holding it."""
        if folder not in self._tops:
            top, probe = None, folder
            while True:
                if os.path.exists(os.path.join(probe, ".git")):
                    top = probe
                    break
                parent = os.path.dirname(probe)
                if parent == probe:
                    break
                probe = parent
            self._tops[folder] = top if top is not None else self._root_of(folder)
        return self._tops[folder]

    def _root_of(self, path: str) -> str | None:
        return next((root for root in self.roots if _under(path, [root])), None)


def _stamp(file: str) -> tuple[int, int]:
    try:
        st = os.stat(file)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, -1


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def global_excludes_file() -> Path | None:
    """Git's global excludes file as git finds it: `core.excludesFile` in the global config
    ($XDG_CONFIG_HOME/git/config or ~/.gitconfig), else $XDG_CONFIG_HOME/git/ignore
    (XDG_CONFIG_HOME defaulting to ~/.config)."""
    git = shutil.which("git")
    configured = None
    if git is not None:
        try:
            result = subprocess.run([git, "config", "--global", "--path", "--get", "core.excludesFile"],
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
            configured = result.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            configured = _excludes_file_from_config_files()
    else:
        configured = _excludes_file_from_config_files()
    if configured:
        return Path(os.path.expanduser(configured))
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "git" / "ignore"


def _excludes_file_from_config_files() -> str | None:
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    found = None
    for file in (os.path.join(config_home, "git", "config"), os.path.expanduser("~/.gitconfig")):  # later wins
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read(file, encoding="utf-8")
        except (configparser.Error, OSError):
            continue
        for section in parser.sections():
            if section.strip().lower() == "core":
                for key, value in parser.items(section):
                    if key.lower() == "excludesfile" and value:
                        found = value.strip().strip('"')
    return found
