"""The one exclusion owner on real files in a real git repository: every rule, links, and rules
that change."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from project_files.exclusions import Exclusions, global_excludes_file

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME and XDG_CONFIG_HOME of the test's own, so the user's real git config plays no part."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    return home


@pytest.fixture
def repo(tmp_path, home):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "src" / "nested").mkdir(parents=True)
    (root / "src" / ".gitignore").write_text("local_*.py\n")
    (root / "src" / "nested" / ".code-assistant-ignore").write_text("draft.py\n")
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("notes.md\n")
    for name in ("src/app.py", "build/gen.py", "debug.log", ".env", ".env.yml", "src/.env.local", "id_rsa", "server.pem",
                 "deploy.key", "credentials.json", "secrets.yaml", "src/local_settings.py", "src/nested/draft.py",
                 "notes.md", "globally.py", "vault/config.py", "src/nested/ok.py", ".aws/config"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x = 1\n")
    return root


@needs_git
def test_every_rule_excludes_what_it_names_and_nothing_else(repo, home):
    (home / "global-ignore").write_text("globally.py\n")
    subprocess.run(["git", "config", "--global", "core.excludesFile", str(home / "global-ignore")], check=True)
    exclusions = Exclusions([repo], ["vault/"])
    reasons = {str(p.relative_to(repo)): exclusions.reason(p) for p in repo.rglob("*")
               if p.is_file() and ".git" not in p.relative_to(repo).parts[:1] and p.name not in (
                   ".gitignore", ".code-assistant-ignore")}
    assert reasons == {
        "src/app.py": None, "src/nested/ok.py": None,
        "build/gen.py": "ignored", "debug.log": "ignored", "src/local_settings.py": "ignored",
        "src/nested/draft.py": "ignored", "notes.md": "ignored", "globally.py": "ignored",
        ".env": "secret-name", ".env.yml": "secret-name", "src/.env.local": "secret-name", "id_rsa": "secret-name",
        "server.pem": "secret-name", "deploy.key": "secret-name", "credentials.json": "secret-name",
        "secrets.yaml": "secret-name", ".aws/config": "secret-name",
        "vault/config.py": "user-glob"}
    assert exclusions.reason(None) is None and exclusions.reason("") is None
    # git agrees on what git ignores
    for name in ("build/gen.py", "debug.log", "src/local_settings.py", "notes.md", "globally.py"):
        assert subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", name]).returncode == 0, name


def test_the_global_excludes_file_is_found_without_git_config(home, monkeypatch):
    monkeypatch.setenv("PATH", "")    # no git: the config files are read
    assert global_excludes_file() == home / ".config" / "git" / "ignore"
    (home / ".gitconfig").write_text('[core]\n\texcludesFile = "~/my-ignore"\n')
    assert global_excludes_file() == home / "my-ignore"


@needs_git
def test_links_out_of_the_root_or_onto_an_excluded_file_are_excluded(repo, tmp_path):
    (tmp_path / "outside.py").write_text("x = 1\n")
    (repo / "out_link.py").symlink_to(tmp_path / "outside.py")
    (repo / "config_link.py").symlink_to(repo / ".env")
    (repo / "ok_link.py").symlink_to(repo / "src" / "app.py")
    (repo / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    exclusions = Exclusions([repo])
    assert exclusions.reason(repo / "out_link.py") == "outside"
    assert exclusions.reason(repo / "linked_dir" / "outside.py") == "outside"
    assert exclusions.reason(repo / "config_link.py") == "secret-name"
    assert exclusions.reason(repo / "ok_link.py") is None


@needs_git
def test_a_new_rule_holds_from_the_next_question(repo):
    exclusions = Exclusions([repo])
    assert not exclusions.excluded(repo / "src" / "app.py")
    (repo / "src" / ".gitignore").write_text("local_*.py\napp.py\n")
    assert exclusions.excluded(repo / "src" / "app.py")
    assert exclusions.with_globs(["src/nested/"]).excluded(repo / "src" / "nested" / "ok.py")
    assert not exclusions.excluded(repo / "src" / "nested" / "ok.py")


def test_outside_git_the_workspace_folders_ignore_files_still_count(tmp_path, home):
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    (root / ".code-assistant-ignore").write_text("sub/\n")
    exclusions = Exclusions([root])
    assert exclusions.excluded(root / "sub" / "a.py") and not exclusions.excluded(root / "a.py")
    assert exclusions.folder_excluded(root / "sub")
    assert os.path.isdir(root / "sub")


@needs_git
def test_a_changed_ignore_file_is_noticed_by_polling(repo):
    exclusions = Exclusions([repo])
    assert not exclusions.excluded(repo / "src" / "app.py")
    seen = exclusions.changes()
    (repo / "src" / ".gitignore").write_text("local_*.py\napp.py\n")
    assert exclusions.excluded(repo / "src" / "app.py")        # a question finds the change first
    assert exclusions.changes() == seen + 1 == exclusions.changes()
