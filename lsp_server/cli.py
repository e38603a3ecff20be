"""`code-assistant lsp [--model DIR] [--tcp PORT] [--remote URL] [--api-key KEY]`: stdio by default."""
from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="code-assistant lsp", description="Run the language server.")
    parser.add_argument("--model", default=None, help="model directory (default: $CODE_ASSISTANT_MODEL or "
                                                      "models/default); unused with --remote")
    parser.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    parser.add_argument("--remote", metavar="URL", help="generate on a `code-assistant serve` at URL")
    parser.add_argument("--api-key", default=None, help="bearer key for --remote")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"], help="local engine weights (default: int4 on the CPU for a float model of 100 M+ weights, else int8)")
    parser.add_argument("--no-prefix-reuse", action="store_true",
                        help="recompute every prompt from scratch (for benchmarks: what prefix reuse saves)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stdout carries the protocol: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    logging.getLogger("lsp_server").setLevel(args.log_level.upper())
    from .server import create_server

    settings = Settings(remote_url=args.remote, api_key=args.api_key)
    engine = None

    def load_engine():
        from engine import Engine, EngineConfig

        options = {} if args.quantize is None else {"quantize": args.quantize}
        return Engine.load(args.model, config=EngineConfig(prefix_reuse=not args.no_prefix_reuse), **options)

    if not args.remote:
        from engine import ModelDirError

        try:
            engine = load_engine()  # before serving, so a bad model directory fails loudly at start
        except (ModelDirError, FileNotFoundError, ValueError) as error:
            print(f"code-assistant lsp: cannot load model: {error}", file=sys.stderr)
            return 2
    server = create_server(settings, engine=engine, load_engine=load_engine)
    try:
        if args.tcp is not None:
            server.start_tcp("127.0.0.1", args.tcp)
        else:
            server.start_io()
    finally:
        if engine is not None:
            engine.close()
    return 0
