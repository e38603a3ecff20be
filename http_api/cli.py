"""`code-assistant serve`: the HTTP API on uvicorn.

SIGTERM (what Kubernetes sends) marks the server not ready, stops accepting connections, lets
in-flight requests finish for up to --drain-timeout seconds, closes the engine and exits 0.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .settings import ServerSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="code-assistant serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model directory (default: $CODE_ASSISTANT_MODEL or models/default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quantize", choices=["int8", "int4", "none"], help="weights: int8, int4 or fp32 (default: int4 on the CPU for a float model of 100 M+ weights, else int8)")
    p.add_argument("--max-batch", type=int, help="sequences decoded together (KV-cache slots)")
    p.add_argument("--max-queue", type=int, help="waiting requests beyond which the server answers 429")
    p.add_argument("--max-queue-wait-ms", type=float,
                   help="the longest a request may wait for a batch slot before the answer is 429 (default 500; 0: wait)")
    p.add_argument("--api-keys-file", type=Path, help="one API key a line (also: CODE_ASSISTANT_API_KEYS=k1,k2)")
    p.add_argument("--rate-limit", type=int, help="requests per minute per API key (0 = unlimited)")
    p.add_argument("--redis-url", help="share the temperature-0 response cache through Redis")
    p.add_argument("--no-response-cache", action="store_true", help="turn the response cache off")
    p.add_argument("--drain-timeout", type=float, help="seconds in-flight requests get after SIGTERM (default 30)")
    p.add_argument("--header-timeout", type=float, help="seconds a request's headers may take to arrive (default 10)")
    p.add_argument("--body-timeout", type=float, help="seconds a request's body may take after its headers (default 30)")
    p.add_argument("--max-connections", type=int, help="open connections beyond which new ones get a 503 unless an "
                                                        "idle one of the busiest address makes room (default 1000)")
    p.add_argument("--max-connections-per-client", type=int,
                   help="open connections one client address may hold (default 100; behind a proxy, raise it)")
    p.add_argument("--debug-log-code", action="store_true", help="log prompts and completions (private code!)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--workspace", type=Path, action="append",
                   help="a repository folder whose files are context for every request (repeatable), "
                        "or one index file from `code-assistant index`")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help="keep matching workspace files out of every context (gitignore syntax, repeatable; "
                        "a .code-assistant-ignore file does the same; docs/privacy.md)")
    p.add_argument("--workspace-rescan", type=float, help="seconds between rescans for changed files (0: never; default 30)")
    p.add_argument("--workspace-max-megabytes", type=int, help="source text indexed at most (default 32)")
    p.add_argument("--no-stop-loops", action="store_true",
                   help="return the model's text even where it repeats itself (no loop guard)")
    p.add_argument("--draft-tokens", type=int, help="speculative decoding: tokens drafted from the context "
                                                    "per step (0: off; default 8)")
    p.add_argument("--context-tokens", type=int, help="prompt tokens a request may use at most (default: the "
                                                      "model's whole context; a long-context model's prefill "
                                                      "grows with it)")
    p.add_argument("--suffix-tokens", type=int, help="tokens of the text after the cursor a prompt keeps at most "
                                                     "(default: what this machine prefills in 0.1 s, timed at start; "
                                                     "no limit where the whole context prefills within 0.4 s)")
    return p


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    flags = {"model_dir": args.model, "host": args.host, "port": args.port, "device": args.device,
             "quantize": args.quantize, "max_batch": args.max_batch,
             "max_queue": args.max_queue, "max_queue_wait_ms": args.max_queue_wait_ms,
             "api_keys_file": args.api_keys_file, "rate_limit": args.rate_limit,
             "redis_url": args.redis_url, "drain_timeout_s": args.drain_timeout, "log_level": args.log_level,
             "workspace": args.workspace, "workspace_rescan_s": args.workspace_rescan,
             "workspace_max_megabytes": args.workspace_max_megabytes, "workspace_exclude": args.exclude,
             "header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout,
             "max_connections": args.max_connections,
             "max_connections_per_client": args.max_connections_per_client}
    if args.no_response_cache:
        flags["response_cache_size"] = 0
    if args.debug_log_code:
        flags["debug_log_code"] = True
    if args.no_stop_loops:
        flags["stop_loops"] = False
    if args.draft_tokens is not None:
        flags["draft_tokens"] = args.draft_tokens
    if args.context_tokens is not None:
        flags["context_tokens"] = args.context_tokens
    if args.suffix_tokens is not None:
        flags["suffix_tokens"] = args.suffix_tokens
    return ServerSettings(**{k: v for k, v in flags.items() if v is not None})


def check_workspace(paths: list[Path]) -> None:
    """Fail at start, not in the background indexer: a missing path, or a file that is no index."""
    from engine.suffix_index import SuffixIndex

    for path in paths:
        if not path.exists():
            raise ValueError(f"--workspace {path} does not exist")
        if path.is_file():
            SuffixIndex.read_header(path)
    if any(p.is_file() for p in paths) and len(paths) > 1:
        raise ValueError("--workspace takes folders, or one index file")


def build_server(app, settings: ServerSettings):
    """uvicorn's Server, plus: the first shutdown signal marks the app not ready before the drain."""
    import uvicorn

    state = app.state.server

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            state.draining = True  # /ready answers 503 from now on
            super().handle_exit(sig, frame)

    from .connection_guard import guarded_protocol

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.drain_timeout_s, lifespan="on",
                            http=guarded_protocol(settings.header_timeout_s, settings.max_connections,
                                                 settings.max_connections_per_client))
    return DrainingServer(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .app import create_app, load_engine
    from .auth import load_api_keys
    from .logging_setup import configure_logging

    settings = settings_from_args(args)
    try:
        # Before listening: a broken model directory (or keys file) stops the server here with one
        # line and exit 2, as `lsp` does, instead of a process that runs and never serves.
        load_api_keys(settings.api_keys_file, settings.api_keys)
        check_workspace(settings.workspace)
        engine = load_engine(settings)
    except (OSError, ValueError) as e:  # ModelDirError and TokenizerError are ValueErrors
        print(f"code-assistant serve: error: {e}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, engine=engine)
        configure_logging(settings.log_level)
        server = build_server(app, settings)
        # uvicorn re-raises the signal it caught once it has shut down gracefully; with the default
        # SIGTERM action that would end the process with 143. A drained shutdown is a success: exit 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        server.run()
    except (OSError, ValueError) as e:
        print(f"code-assistant serve: error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    return 0 if server.started else 1
