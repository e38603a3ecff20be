"""The package a user installs: `pip wheel .` -> a fresh venv -> `code-assistant serve` started outside
the checkout serves the shipped model on the compiled kernels, with or without a compiler on PATH;
and the checkout without a compiler falls back to PyTorch with one line saying why."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import httpx
import pytest

from benchmarks.http_bench import wait_ready
from engine import kernels

from .http_api.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
# Not part of the build: environments, history, outputs and the folders no package is in.
NOT_BUILT = shutil.ignore_patterns(".venv", ".git", "build", "dist", "data", "runs", "node_modules", "tests", "docs",
                                   "deploy", "editors", "vscode-client", "scripts", "*.egg-info", "__pycache__",
                                   ".pytest_cache", ".hypothesis", "eval")


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The repository's files as a release would have them, so the build leaves the checkout alone."""
    src = tmp_path_factory.mktemp("source") / "code-assistant"
    shutil.copytree(ROOT, src, ignore=NOT_BUILT)
    return src


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools comes from this environment, so the test needs no network.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(source_copy)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [built] = out.glob("code_assistant-*.whl")
    size = built.stat().st_size
    print(f"\n{built.name}: {size / 2**20:.2f} MiB")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel alone installed; its dependencies come from this environment's
    third-party site-packages through a .pth of one line (a directory on a .pth line is only added
    to sys.path: its own .pth files, the checkout's editable-install finder among them, never run)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def bare_env(tmp: Path, path: str) -> dict:
    """An environment that names nothing of the checkout: no PYTHONPATH, no model, a fresh kernel cache."""
    (tmp / "home").mkdir(exist_ok=True)
    return {"PATH": path, "HOME": str(tmp / "home"), "CODE_ASSISTANT_CACHE": str(tmp / "kernel-cache"),
            "LANG": "C.UTF-8"}


def test_the_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    code = ("import sys, engine, engine.model_dir as m, engine.kernels as k\n"
            "print(engine.__file__); print(m.default_model_dir()); print(k.PREBUILT)\n"
            "print(any('__editable__' in p for p in sys.path) or any('__editable__' in type(f).__name__ for f in sys.meta_path))")
    run = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=bare_env(tmp_path, str(venv / "bin")), timeout=60)
    assert run.returncode == 0, run.stderr
    engine_file, model_dir, prebuilt, editable = run.stdout.split("\n")[:4]
    assert Path(engine_file).is_relative_to(venv) and editable == "False"
    assert Path(model_dir) == Path(engine_file).parent / "models" / "default"
    assert sorted(p.name for p in Path(model_dir).iterdir()) == sorted(
        ["MODEL_CARD.md", "config.json", "model.safetensors", "summary.json", "tokenizer.tiktoken"])
    assert {p.name for p in Path(prebuilt).glob("*.so")} >= {f"{name}-{variant}.so" for name in kernels.KERNELS
                                                                for variant, _, _ in kernels.variants()}


@pytest.mark.parametrize("compiler", ["with a compiler", "no compiler on PATH"])
def test_installed_serve_runs_the_shipped_model_on_the_c_kernels(venv, tmp_path, compiler):
    path = f"{venv / 'bin'}:{os.defpath}" if compiler == "with a compiler" else str(venv / "bin")
    env = bare_env(tmp_path, path)
    if compiler == "no compiler on PATH":
        assert shutil.which("cc", path=path) is None and shutil.which("gcc", path=path) is None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(venv / "bin" / "code-assistant"), "serve", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(server, url + "/ready", log_path, "the installed server")
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["model"] == "default" and health["kernels"] == "c", health
        assert health["kernels_reason"] is None
        answer = httpx.post(url + "/v1/completions", json={"prompt": "def add(a, b):\n", "max_tokens": 8,
                                                           "temperature": 0}, timeout=60)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"], answer.text
    finally:
        server.terminate()
        server.wait(30)
    loaded = [line for line in log_path.read_text().splitlines() if "model_loaded" in line]
    assert loaded and '"kernels": "c"' in loaded[0], log_path.read_text()[-3000:]
    assert "runs in PyTorch" not in log_path.read_text()  # paged attention's kernel loaded as well
    # The prebuilt kernels served: nothing was compiled at first use.
    assert not list((tmp_path / "kernel-cache").glob("*.so"))


def test_the_sdist_carries_the_kernel_sources_and_the_model(source_copy, tmp_path):
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    build = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=source_copy, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    with tarfile.open(tmp_path / build.stdout.strip().splitlines()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"setup.py", "models/default/model.safetensors", "models/default/tokenizer.tiktoken"} <= names
    assert {f"engine/{name}.c" for name in kernels.KERNELS} <= names


def test_the_checkout_without_a_compiler_runs_pytorch_and_says_why_in_one_line(tmp_path):
    """No prebuilt kernel (a checkout) and no compiler: the engine loads, logs one line, completes."""
    code = ("import logging, sys, json; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from engine import Engine, SamplingParams\n"
            "e = Engine.load()\n"
            "text = e.complete('def f():\\n', params=SamplingParams(max_tokens=4)).text\n"
            "print(json.dumps(e.decode_path)); e.close()\n")
    env = {**bare_env(tmp_path, str(Path(sys.executable).parent)), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    path = json.loads(run.stdout.strip().splitlines()[-1])
    assert path["kernels"] == "pytorch" and "no C compiler" in path["reason"], path
    assert len([line for line in run.stderr.splitlines() if "runs in PyTorch" in line]) == 1, run.stderr


def test_a_missing_source_is_a_reason_not_an_exception(tmp_path):
    path, reason = kernels.build(tmp_path / "gone.c", ("-O2",))
    assert path is None and "gone.c" in reason


def test_the_best_prebuilt_level_the_cpu_flags_allow_is_chosen(tmp_path):
    levels = kernels.variants("x86_64")
    for variant, _, _ in levels:
        (tmp_path / f"decode_kernel-{variant}.so").touch()
    v4, v3, v2 = (needs for _, _, needs in levels)

    def chosen(flags):
        return kernels.prebuilt("decode_kernel", frozenset(flags), tmp_path, "x86_64")

    assert chosen(v4 | {"amx_tile"}).name == "decode_kernel-x86-64-v4-vnni.so"
    assert chosen(v4 - {"avx512_vnni"}).name == "decode_kernel-x86-64-v3.so"  # AVX-512 without VNNI
    assert chosen(v3).name == "decode_kernel-x86-64-v3.so"
    assert chosen(v2).name == "decode_kernel-x86-64-v2.so"
    assert chosen({"sse2"}) is None  # older than every level: compiled at first use, where it can be
    (tmp_path / "decode_kernel-x86-64-v4-vnni.so").unlink()
    assert chosen(v4).name == "decode_kernel-x86-64-v3.so"
