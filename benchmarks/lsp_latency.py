"""Request -> response time of the language server for keystroke continuations, with and without
prefix reuse in the engine.

Drives the real `code-assistant lsp` over stdio with pygls's client: open a real Python file, then
type a new line into it one character at a time (incremental didChange), asking for an inline
completion after every keystroke, as an editor does. The debounce is set to 0 so the figures are
the server's own work; an editor's automatic trigger adds `debounceMs` (75 ms by default). Two
servers, with and without prefix reuse, take turns on the same keystrokes.

    python -m benchmarks.lsp_latency [--model DIR] [--keystrokes 80] [--out bench-results]

Without --model it builds the default-size random model (6 layers x 256, vocab 8192, block 256):
latency depends on the model's size, not on what it learned.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from .report import pyplot, write_json

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DOCUMENT = STDLIB / "json" / "encoder.py"
URI = "file:///bench/encoder.py"
TYPED_LINE = "        chunks = self.iterencode(o, _one_shot=True)  # keystroke by keystroke"
CURSOR_BEFORE = "        if not isinstance(chunks, (list, tuple)):"  # a line inside JSONEncoder.encode


def make_random_model(out: Path) -> Path:
    """The default model's shape with random weights (tokenizer trained on two stdlib packages)."""
    import torch

    from engine.model import ModelConfig, Transformer
    from engine.model_dir import save_model_dir
    from engine.tokenizer import CODE_PAT_STR, hf_tokenizer_files, special_token_ids
    from training.data import CollectOptions, collect
    from training.tokenizer import train_bpe

    if (out / "config.json").exists():
        return out
    corpus = collect([STDLIB / "json", STDLIB / "email"], CollectOptions(val_fraction=0.0))
    ranks = train_bpe((f.text for f in corpus.train), 8192, show_progress=False)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=4, n_embd=256)
    eot = special_token_ids(len(ranks))["<|endoftext|>"]
    save_model_dir(out, Transformer(config), hf_tokenizer_files(ranks, CODE_PAT_STR, config.block_size), eot, eot,
                   {"note": "random weights, for benchmarks"})
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Session:
    """One `code-assistant lsp` process with the benchmark document open."""

    def __init__(self, model: Path, prefix_reuse: bool, max_tokens: int, workspace: Path | None = None):
        self.model, self.prefix_reuse, self.max_tokens = model, prefix_reuse, max_tokens
        self.workspace = workspace
        self.client = LanguageClient("lsp-latency-bench", "0")
        self.version = 1
        self.times: list[float] = []

    async def start(self, text: str) -> None:
        server = [str(Path(sys.executable).parent / "code-assistant"), "lsp", "--model", str(self.model),
                  "--log-level", "WARNING"] + ([] if self.prefix_reuse else ["--no-prefix-reuse"])
        await self.client.start_io(*server)
        folders = [types.WorkspaceFolder(uri=self.workspace.resolve().as_uri(), name="w")] if self.workspace else None
        await self.client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), workspace_folders=folders,
            initialization_options={"debounceMs": 0, "neighbours": False, "maxTokens": self.max_tokens}))
        self.client.initialized(types.InitializedParams())
        while self.workspace:   # the index is built in the background: time keystrokes once it is in
            stats = await self.client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="codeAssistant.stats"))
            if stats["workspace"].get("ready"):
                self.workspace_stats = stats["workspace"]
                break
            await asyncio.sleep(0.5)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=URI, language_id="python", version=1, text=text)))

    async def keystroke(self, line: int, column: int, char: str) -> float:
        """Type `char` at (line, column), then time the inline completion request after it."""
        self.version += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=self.version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(line, column), types.Position(line, column)), text=char)]))
        start = time.perf_counter()
        await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line, column + 1)))
        return (time.perf_counter() - start) * 1000

    async def finish(self) -> dict:
        stats = await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="codeAssistant.stats"))
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()
        times = self.times
        return {"prefix_reuse": self.prefix_reuse, "max_tokens": self.max_tokens, "requests": len(times),
                "workspace": getattr(self, "workspace_stats", None),
                "p50_ms": round(percentile(times, 0.5), 1), "p95_ms": round(percentile(times, 0.95), 1),
                "mean_ms": round(statistics.mean(times), 1),
                "prefix_tokens_reused": stats.get("engine", {}).get("prefix_tokens_reused"),
                "times_ms": [round(t, 2) for t in times]}


async def run(model: Path, keystrokes: int, max_tokens: int, warmup: int = 5,
              workspace: Path | None = None) -> list[dict]:
    """Both servers run side by side and take turns, keystroke by keystroke: on a shared machine
    both then see the same background load, which would otherwise decide the comparison. With a
    `workspace` folder the two are: prefix reuse without it, and prefix reuse with it indexed."""
    text_lines = DOCUMENT.read_text().split("\n")
    line = text_lines.index(CURSOR_BEFORE)
    text_lines.insert(line, "")
    sessions = [Session(model, True, max_tokens), Session(model, False, max_tokens)]
    if workspace is not None:
        sessions = [Session(model, True, max_tokens), Session(model, True, max_tokens, workspace)]
    for session in sessions:
        await session.start("\n".join(text_lines))
    typed = (TYPED_LINE * (1 + (keystrokes + warmup) // len(TYPED_LINE)))[:keystrokes + warmup]
    for column, char in enumerate(typed):
        for session in sessions if column % 2 else sessions[::-1]:
            elapsed = await session.keystroke(line, column, char)
            if column >= warmup:
                session.times.append(elapsed)
    return [await session.finish() for session in sessions]


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([r["times_ms"] for r in results], whis=(5, 95), showfliers=False)
    ax.set_xticks([1, 2], [(f"{r['workspace']['files']:,}-file workspace" if r["workspace"] else "no workspace")
                           if any(x["workspace"] for x in results) else
                           "prefix reuse" if r["prefix_reuse"] else "no reuse" for r in results])
    ax.set_ylabel("request -> response (ms)")
    ax.set_title(f"LSP keystroke continuation, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsp_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: a random default-size model)")
    parser.add_argument("--keystrokes", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=48, help="the maxTokens setting (48 by default)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--workspace", type=Path, help="compare without and with this folder as the workspace")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or make_random_model(args.out / "lsp-bench-model")
    results = asyncio.run(run(model, args.keystrokes, args.max_tokens, workspace=args.workspace))
    summary = {"model": str(model), "cores": os.cpu_count(), "keystrokes": args.keystrokes,
               "max_tokens": args.max_tokens, "results": results}
    name = "lsp_latency_workspace" if args.workspace else "lsp_latency"
    write_json(args.out / f"{name}.json", summary)
    plot(results, args.out / f"{name}.png")
    for r in results:
        print(f"maxTokens={r['max_tokens']} prefix_reuse={r['prefix_reuse']} workspace={bool(r['workspace'])}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms "
              f"(mean {r['mean_ms']} ms, {r['requests']} requests, {r['prefix_tokens_reused']} tokens reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
