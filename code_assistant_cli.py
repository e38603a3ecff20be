"""The one command line: `code-assistant <job>`. Each job lives in its package; this only parses
arguments, calls it, and turns known errors into a one-line message and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_data(args, extra):
    from training.data import CollectOptions, build_dataset, default_sources

    sources = [Path(s) for s in args.src] if args.src else default_sources()
    extensions = tuple("." + e.lstrip(".") for e in args.ext) if args.ext else (".py",)
    options = CollectOptions(skip_tests=not args.keep_tests, val_fraction=args.val_fraction, extensions=extensions)
    meta = build_dataset(sources, Path(args.out), args.vocab_size, options, args.tokenizer)
    print(json.dumps({"out": args.out, **{k: {kk: v[kk] for kk in ("files", "bytes", "tokens")}
                                          for k, v in meta["splits"].items()}, "skipped": meta["skipped"]}))


def cmd_train(args, extra):
    from training.config import load_config, parse_overrides
    from training.train import train

    overrides = parse_overrides(extra)
    if args.devices is not None:
        overrides.setdefault("trainer", {})["devices"] = args.devices
    if args.max_steps is not None:
        overrides.setdefault("trainer", {})["max_steps"] = args.max_steps
    config = load_config(args.config, overrides, pretrained=args.init is not None)
    summary = train(config, Path(args.data), Path(args.out), resume=args.resume,
                    init=Path(args.init) if args.init else None)
    if summary:
        print(json.dumps(summary))


def cmd_eval(args, extra):
    from training.evaluate import evaluate

    if bool(args.data) == bool(args.src):
        raise ValueError("give exactly one of --data DATA_DIR or --src DIR")
    result = evaluate(Path(args.model), Path(args.data) if args.data else None,
                      [Path(s) for s in args.src] if args.src else None, max_windows=args.max_windows,
                      seq_len=args.seq_len, weights=args.weights)
    if args.line_completion:
        from training.line_completion import line_completion_report, tune_mix

        folders = [Path(f) for f in args.line_completion]
        if args.tune_mix:
            result["tune_mix"] = tune_mix(Path(args.model), folders, args.tuning_lines_per_file, args.quantize,
                                          args.lines_per_file)
        else:
            result["line_completion"] = line_completion_report(Path(args.model), folders, args.lines_per_file,
                                                               args.quantize, args.variant, loops=not args.no_loops)
    print(json.dumps(result))


def cmd_index(args, extra):
    from tqdm import tqdm

    from engine.model_dir import default_model_dir, load_tokenizer_from_dir
    from project_files.indexing import open_workspace
    from project_files.walk import WalkSettings

    folders = [Path(f) for f in args.folder]
    if any(not f.is_dir() for f in folders):
        raise ValueError(f"not a folder: {next(f for f in folders if not f.is_dir())}")
    tokenizer = load_tokenizer_from_dir(Path(args.model) if args.model else default_model_dir())
    settings = WalkSettings(max_total_bytes=args.max_megabytes << 20)
    with tqdm(desc="index", unit="file") as bar:
        project = open_workspace(folders, tokenizer, tuple(args.exclude or ()), settings,
                                 progress=lambda files, _: bar.update(files - bar.n))
    project.save(args.out)
    print(json.dumps({"out": args.out, "files": project.report.files, "bytes": project.report.bytes,
                      "tokens": project.index.n_tokens, "index_bytes": Path(args.out).stat().st_size,
                      "seconds": round(project.index.build_seconds, 2), "skipped": project.report.skipped}))


# Jobs that own their arguments: `code-assistant JOB ...` hands the rest of argv to MODULE.main(argv).
DELEGATED = {
    "quantize": ("engine.quantize", "write an int8 or int4 (--bits 4) copy of a model directory"),
    "serve": ("http_api.cli", "run the HTTP API (OpenAI-compatible) on uvicorn"),
    "lsp": ("lsp_server.cli", "run the language server on stdio (or --tcp)"),
    "bench": ("benchmarks.cli", "benchmarks: `bench engine`, `bench http`"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="code-assistant", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="collect source files, tokenize them, write train/val .bin")
    p.add_argument("--src", action="append", help="source folder (repeatable; default: this Python's stdlib)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--tokenizer", default="code-bpe", metavar="code-bpe|gpt2|MODEL_DIR",
                   help="train our code BPE (default), use tiktoken's gpt2 (must be in tiktoken's cache), or a "
                        "model directory's own tokenizer (to fine-tune that model with `train --init MODEL_DIR`)")
    p.add_argument("--ext", action="append", metavar="EXT",
                   help="file extension to collect (repeatable: --ext py --ext ts; default: py)")
    p.add_argument("--keep-tests", action="store_true", help="keep test folders and test_*.py files")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model (Lightning); extra --section.key value overrides the YAML")
    p.add_argument("--config", default=None, help="YAML config (trainer/model/optim/data sections)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--resume", action="store_true", help="continue from OUT/run/checkpoints/last.ckpt")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="fine-tune this model directory (Hugging Face or ours) instead of a fresh model; its "
                        "config, tokenizer and FIM tokens are kept (the data must come from `data --tokenizer`)")
    p.add_argument("--devices", type=int)
    p.add_argument("--max-steps", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="val loss and bits per byte of a model")
    p.add_argument("--model", required=True)
    p.add_argument("--data")
    p.add_argument("--src", action="append")
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=0,
                   help="tokens per window (default: the model's context, at most 2048)")
    p.add_argument("--line-completion", action="append", metavar="PROJECT_DIR",
                   help="also score line completion on a held-out project folder (repeatable); "
                        "the project's other files serve as neighbours, the folder as the workspace")
    p.add_argument("--lines-per-file", type=int, default=10)
    p.add_argument("--weights", choices=["float", "int8", "int4"], default="float",
                   help="weights for the loss and bits per byte: float (int8 dequantized), or int8 / int4 as the "
                        "engine runs them on the CPU")
    p.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8", help="engine weights for line completion")
    p.add_argument("--variant", action="append", help="only these line-completion variants")
    p.add_argument("--no-loops", action="store_true", help="skip the loop rate of 64-token multi-line completions")
    p.add_argument("--tune-mix", action="store_true",
                   help="grid-search the cache mix on the tuning lines (never the reported ones) instead")
    p.add_argument("--tuning-lines-per-file", type=int, default=10)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="index a repository ahead, for `serve --workspace FILE`")
    p.add_argument("folder", nargs="+", help="repository folders (excluded, binary and generated files are skipped: "
                                              "docs/privacy.md)")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help="keep matching files out of the index (gitignore syntax, repeatable; "
                        "a .code-assistant-ignore file does the same)")
    p.add_argument("--out", required=True, help="index file to write (safetensors)")
    p.add_argument("--model", help="the model whose tokenizer the index uses (default: the default model)")
    p.add_argument("--max-megabytes", type=int, default=32, help="source text indexed at most")
    p.set_defaults(func=cmd_index)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def known_errors() -> tuple[type[BaseException], ...]:
    from engine.model_dir import ModelDirError
    from engine.tokenizer import TokenizerError
    from training.config import ConfigError
    from training.data import DataError

    return (ModelDirError, TokenizerError, ConfigError, DataError, OSError, ValueError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (YAML's parser, for one, writes the place on lines of its own)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        command = argv[0]
        job = lambda: importlib.import_module(DELEGATED[command][0]).main(argv[1:])  # noqa: E731
    else:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        command = args.command
        job = lambda: args.func(args, extra) or 0  # noqa: E731
    try:
        return job()
    except KeyboardInterrupt:
        return 130
    except known_errors() as e:
        print(f"code-assistant {command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
