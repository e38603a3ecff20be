"""Start and stop the pieces of a local deployment on loopback: `code-assistant serve` replicas,
nginx in front of them, Prometheus scraping them. Used by the rehearsal scripts beside this file
and by tests/deploy. Every process gets its own working directory and a free port."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


class StackError(RuntimeError):
    """A piece of the local stack did not start; the message says which and why (with its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_tool(name: str) -> str | None:
    """A system binary by name; nginx lives in /usr/sbin, which is not on every user's PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def code_assistant_command() -> list[str]:
    beside_python = Path(sys.executable).parent / "code-assistant"
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("code-assistant")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys, code_assistant_cli; sys.exit(code_assistant_cli.main())"]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_json(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body or b"{}")
        except ValueError:  # an error page from a proxy, not the API
            return e.code, {"body": body.decode(errors="replace")[:500]}


@dataclass
class Process:
    """A child process with its log file; `stop` is idempotent."""
    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int = 0               # its loopback port, once it listens

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(name: str, command: list[str], workdir: Path, env: dict | None = None) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=workdir, env={**os.environ, **(env or {})})
    log.close()  # the child holds its own descriptor
    return Process(name, popen, log_path)


def wait_until(process: Process, check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(f"{process.name} exited with {process.popen.returncode} before {what}:\n"
                             f"{process.log_tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{process.name}: no {what} after {timeout:.0f} s:\n{process.log_tail()}")


def start_servers(replicas: list[tuple[str, Path]], workdir: Path, extra_args: tuple[str, ...] = (),
                  ready_timeout: float = 120.0) -> list[Process]:
    """`code-assistant serve` replicas on 127.0.0.1, started together so their model loads overlap,
    returned once each answers 200 on /ready. `replicas` is (name, model directory) pairs."""
    started = []
    try:
        for name, model_dir in replicas:
            port = free_port()
            command = [*code_assistant_command(), "serve", "--model", str(model_dir), "--host", "127.0.0.1",
                       "--port", str(port), *extra_args]
            # One torch thread each: several replicas share a small machine in the rehearsals.
            process = spawn(name, command, workdir / name, env={"OMP_NUM_THREADS": "1"})
            process.port = port
            started.append(process)
        for process in started:
            wait_until(process, lambda p=process: http_get(p.url + "/ready")[0] == 200, ready_timeout,
                       "200 from /ready")
    except BaseException:
        for process in started:
            process.stop(signal.SIGKILL)
        raise
    return started


def start_server(model_dir: Path, workdir: Path, extra_args: tuple[str, ...] = ()) -> Process:
    return start_servers([("server", model_dir)], workdir, extra_args)[0]


def nginx_config(upstreams: list[tuple[int, int]], listen_port: int, workdir: Path) -> str:
    """nginx as a stand-in for the Kubernetes Service: weighted round robin over (port, weight)
    upstreams. A replica that refuses or drops a connection is skipped for 10 s, and the request
    goes to the next one, POSTs included: a completion has no side effects, so a retry is safe
    (nginx does not retry POSTs unless told `non_idempotent`)."""
    servers = "\n".join(f"    server 127.0.0.1:{port} weight={weight} max_fails=1 fail_timeout=10s;"
                         for port, weight in upstreams)
    temp = "\n".join(f"  {kind}_temp_path {workdir}/{kind}_temp;"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Workers run as the invoking user; as root nginx would switch them to `nobody`, which cannot
    # write the temp paths in this user's working directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
{temp}
  log_format upstream '$status $request_time "$upstream_addr" "$upstream_status" $request';
  access_log {workdir}/access.log upstream;
  upstream code_assistant {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{listen_port};
    location / {{
      proxy_pass http://code_assistant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
      proxy_read_timeout 60s;
      proxy_buffering off;
      # Which replica answered; "a, b" when nginx retried on b after a failed.
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
"""


def start_nginx(upstreams: list[tuple[int, int]], workdir: Path) -> Process:
    nginx = find_tool("nginx")
    if nginx is None:
        raise StackError("nginx is not installed (Debian: apt-get install nginx)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(upstreams, port, workdir))
    process = spawn("nginx", [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(config)],
                    workdir)
    process.port = port
    wait_until(process, lambda: http_get(process.url + "/health")[0] == 200, 15, "200 from /health through nginx")
    return process


def prometheus_config(targets: list[str], interval: str = "1s") -> dict:
    """The repo's deploy/prometheus/prometheus.yml pointed at `targets`, with its rules file by
    absolute path and short intervals so a test sees scrapes and rule evaluations in seconds."""
    import yaml

    source = DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(source.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str((source.parent / f).resolve()) for f in config.get("rule_files", [])]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "code-assistant"]
    if len(jobs) != 1:
        raise StackError(f"{source}: expected one scrape job named code-assistant, found {len(jobs)}")
    jobs[0]["static_configs"] = [{"targets": targets}]
    jobs[0]["scrape_timeout"] = interval
    return config


def start_prometheus(targets: list[str], workdir: Path, interval: str = "1s") -> Process:
    import yaml

    prometheus = find_tool("prometheus")
    if prometheus is None:
        raise StackError("prometheus is not installed (Debian: apt-get install prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, interval)))
    port = free_port()
    process = spawn("prometheus", [prometheus, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                                   f"--storage.tsdb.path={workdir / 'data'}"], workdir)
    process.port = port
    wait_until(process, lambda: http_get(process.url + "/-/ready")[0] == 200, 30, "200 from /-/ready")
    return process


def prometheus_query(prometheus_url: str, expr: str) -> list[dict]:
    """An instant query through Prometheus' HTTP API; the result vector."""
    status, body = http_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200 or body.get("status") != "success":
        raise StackError(f"query {expr!r} failed: {status} {body}")
    return body["data"]["result"]
