"""Speculative decoding with drafts from the context: acceptance and speed-up on file
continuations from held-out projects, and what verifying a draft costs on a larger model.

    python -m benchmarks.speculative_bench [--model DIR] [--large DIR] [--out docs/bench]

For each held-out file, prompts end at line starts a few hundred tokens in; the engine (defaults:
cache model, token healing) continues them greedily with drafts and without, alternately, at
batch 1, and the texts are compared. With fp32 weights they must be equal; int8 weights quantize
activations per forward (FBGEMM's dynamic linear), so a wider forward can flip a near tie, as
batching with other requests already can. Writes speculative_bench.json and .png into --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_cache import BlockPool, BlockTable, KVCache
from engine.model_dir import default_model_dir

from .report import pyplot, write_json

HELDOUT = Path(__file__).parents[1] / "tests" / "data" / "heldout"


def continuation_prompts(n_per_file: int, chars: int) -> list[str]:
    prompts = []
    for path in sorted(HELDOUT.rglob("*.py")):
        text = path.read_text()
        starts = [i + 1 for i, ch in enumerate(text) if ch == "\n" and i > chars]
        step = max(1, len(starts) // (n_per_file + 1))
        prompts += [text[:s] for s in starts[step::step][:n_per_file]]
    return prompts


def run(engine: Engine, prompts: list[str], params: SamplingParams) -> tuple[list[str], float, int]:
    texts, tokens, start = [], 0, time.perf_counter()
    for p in prompts:
        done = engine.complete(p, params=params)
        texts.append(done.text)
        tokens += done.tokens
    return texts, time.perf_counter() - start, tokens


def llama_cpp_lookup(gguf: Path, prompt_ids: list[list[int]], max_tokens: int, context: int,
                     rounds: int = 3) -> dict:
    """llama.cpp (llama-cpp-python) on the same prompt tokens, greedy, batch 1, without and with
    its own prompt-lookup decoding (LlamaPromptLookupDecoding: 2-gram match, 8 drafted tokens)."""
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    threads = torch.get_num_threads()
    engines = {name: llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_batch=context, n_threads=threads,
                                     verbose=False, draft_model=draft)
               for name, draft in (("no lookup", None), ("prompt lookup", LlamaPromptLookupDecoding(num_pred_tokens=8)))}
    speeds, texts = {name: [] for name in engines}, {}
    for _ in range(rounds):
        for name, llm in engines.items():  # alternating, medians
            out, tokens, start = [], 0, time.perf_counter()
            for ids in prompt_ids:
                # room for the completion and a draft past it: llama.cpp does not stop a draft at n_ctx
                ids = ids[-(context - max_tokens - 12):]
                llm.reset()
                new = []
                for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                    if token == llm.token_eos() or len(new) == max_tokens:
                        break
                    new.append(token)
                out.append(new)
                tokens += len(new)
            speeds[name].append(tokens / (time.perf_counter() - start))
            texts[name] = out
    same = sum(a == b for a, b in zip(texts["no lookup"], texts["prompt lookup"]))
    median = {name: round(statistics.median(v), 1) for name, v in speeds.items()}
    return {"gguf": str(gguf), "tokens_per_s": median, "speedup": round(median["prompt lookup"] / median["no lookup"], 2),
            "identical_completions": f"{same} of {len(prompt_ids)}"}


def verification_cost(model_dir: Path, context: int, widths: list[int], repeats: int = 7) -> dict:
    """CPU milliseconds of one forward of 1 + draft tokens at `context` positions, batch 1, on one
    thread (CPU time of the calling thread: the shared machine's load does not count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = Engine.load(model_dir, config=EngineConfig(kv_cache_mb=512))
    model, c = engine.model, engine.model.config
    cache = engine.cache
    pool = BlockPool(cache.n_blocks, cache.block_tokens)
    table = BlockTable()
    pool.grow(table, context + max(widths))
    ids = torch.randint(0, c.vocab_size, (1, context))
    with torch.no_grad():
        for start in range(0, context, 512):
            pos = torch.arange(start, min(start + 512, context))[None]
            model(ids[:, start:start + 512], pos, cache.batch([table.blocks], pos), last_only=True)
        out = {}
        for _ in range(2):
            for w in widths:  # alternating widths, medians
                pos = torch.arange(context, context + w)[None]
                idx = torch.randint(0, c.vocab_size, (1, w))
                t0 = time.thread_time()
                for _ in range(repeats):
                    model(idx, pos, cache.batch([table.blocks], pos))
                out.setdefault(w, []).append((time.thread_time() - t0) / repeats * 1000)
    engine.close()
    torch.set_num_threads(threads)
    base = statistics.median(out[1])
    return {str(w): {"ms": round(statistics.median(t), 2), "vs_1_token": round(statistics.median(t) / base, 2)}
            for w, t in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--large", type=Path, default=None, help="a larger model directory for the verification cost")
    ap.add_argument("--out", type=Path, default=Path("docs/bench"))
    ap.add_argument("--per-file", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--draft-tokens", type=int, default=8)
    ap.add_argument("--quantize", default="int8", choices=["int8", "none"])
    ap.add_argument("--gguf", type=Path, default=None, help="the same model as llama.cpp GGUF, for its prompt lookup")
    ap.add_argument("--network-only", action="store_true", help="no cache model, no token healing (as llama.cpp)")
    args = ap.parse_args(argv)
    model_dir = args.model or default_model_dir()
    prompts = continuation_prompts(args.per_file, 600)
    params = SamplingParams(max_tokens=args.max_tokens)
    quantize = None if args.quantize == "none" else args.quantize
    plain_net = {"cache_weight": 0.0, "token_healing": False} if args.network_only else {}
    spec = Engine.load(model_dir, quantize=quantize, config=EngineConfig(draft_tokens=args.draft_tokens, **plain_net))
    plain = Engine.load(model_dir, quantize=quantize, config=EngineConfig(draft_tokens=0, **plain_net))
    run(spec, prompts[:2], params), run(plain, prompts[:2], params)  # warm-up
    before = spec.stats
    times = {"drafts": [], "no drafts": []}
    same = []
    for _ in range(3):
        for name, engine in (("drafts", spec), ("no drafts", plain)):
            texts, seconds, tokens = run(engine, prompts, params)
            times[name].append(tokens / seconds)
            if name == "drafts":
                drafted = texts
            else:
                same += [a == b for a, b in zip(drafted, texts)]
    if quantize is None:
        assert all(same), "speculative decoding changed a greedy completion"
    after = spec.stats
    proposed = after["draft_tokens_proposed"] - before["draft_tokens_proposed"]
    accepted = after["draft_tokens_accepted"] - before["draft_tokens_accepted"]
    by_position = [a - b for a, b in zip(after["draft_accepted_by_position"], before["draft_accepted_by_position"])]
    generated = after["tokens_generated"] - before["tokens_generated"]
    report = {
        "model": str(model_dir), "prompts": len(prompts), "max_tokens": args.max_tokens,
        "draft_tokens": args.draft_tokens, "torch_threads": torch.get_num_threads(),
        "tokens_per_s": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "speedup": round(statistics.median(times["drafts"]) / statistics.median(times["no drafts"]), 2),
        "draft_tokens_proposed": proposed, "draft_tokens_accepted": accepted,
        "acceptance_rate": round(accepted / max(1, proposed), 3),
        "accepted_share_of_generated": round(accepted / max(1, generated), 3),
        "accepted_by_position": by_position, "quantize": args.quantize, "network_only": args.network_only,
        "identical_completions": f"{sum(same)} of {len(same)}",
    }
    prompt_ids = [spec.build_prompt(p, None, args.max_tokens) for p in prompts]
    context = spec.context_length
    spec.close()
    plain.close()
    print(json.dumps(report), flush=True)
    try:
        import llama_cpp  # noqa: F401
        reason = None if args.gguf is not None else "no --gguf given"
    except ImportError:
        reason = "llama-cpp-python is not installed (pip install 'code-assistant[bench]')"
    if reason:
        print(f"skipping llama.cpp's prompt lookup: {reason}", flush=True)
    else:
        report["llama_cpp"] = llama_cpp_lookup(args.gguf, prompt_ids, args.max_tokens, context)
        print(json.dumps(report["llama_cpp"]), flush=True)
    if args.large is not None:
        report["verification_cost"] = {"model": str(args.large), "context": 1000,
                                       "by_width": verification_cost(args.large, 1000, [1, 3, 5, 9])}
        print(json.dumps(report["verification_cost"]), flush=True)
    write_json(args.out / "speculative_bench.json", report)
    plot(report, args.out / "speculative_bench.png")
    print("wrote", args.out / "speculative_bench.json")
    return 0


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    speeds = report["tokens_per_s"]
    left.bar(list(speeds), list(speeds.values()), color=["#2a7", "#999"])
    left.set_ylabel("tokens/s, batch 1")
    left.set_title(f"held-out file continuations (acceptance {report['acceptance_rate']:.0%})")
    right.bar(range(len(report["accepted_by_position"])), report["accepted_by_position"])
    right.set_xlabel("position in the draft")
    right.set_ylabel("accepted draft tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
