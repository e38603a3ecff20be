"""Line completion, CodeXGLUE line-level style, through the engine as users call it.

For sampled lines of held-out files the model gets the file up to the line's indentation (and, in
the FIM variant, the rest of the file after the line as suffix), greedy-completes to the end of the
line, and is scored by exact match and edit similarity (1 - Levenshtein distance / longer length).
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine import Engine, SamplingParams


@dataclass
class LineTask:
    path: str
    prefix: str      # the file up to the line's indentation, inclusive
    target: str      # the rest of the line, trailing whitespace removed
    suffix: str      # everything after the line (from its newline on)


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def is_scorable(line: str) -> bool:
    body = line.strip()
    return len(body) >= 4 and any(c.isalnum() for c in body) and not body.startswith("#")


def sample_tasks(files: dict[str, str], per_file: int, seed: int = 0) -> list[LineTask]:
    rng = random.Random(seed)
    tasks = []
    for path in sorted(files):
        text = files[path]
        lines = text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        candidates = [i for i, line in enumerate(lines) if i > 0 and is_scorable(line)]
        for i in sorted(rng.sample(candidates, min(per_file, len(candidates)))):
            line = lines[i]
            indent = len(line) - len(line.lstrip(" \t"))
            body = line[indent:].rstrip("\r\n")
            tasks.append(LineTask(path, text[:offsets[i] + indent], body.rstrip(),
                                  text[offsets[i] + len(line.rstrip("\r\n")):]))
    return tasks


def run_line_completion(engine: Engine, tasks: list[LineTask], fim: bool = False,
                        cache_weight: float | None = None, neighbours: dict[str, str] | None = None,
                        max_tokens: int = 48, desc: str = "lines") -> dict:
    """Score `tasks`; `neighbours` maps a path to the other files' texts given as extra context."""
    exact, similarity, latencies = [], [], []
    for task in tqdm(tasks, desc=desc, unit="line", leave=False):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=["\n"], cache_weight=cache_weight)
        extra = None
        if neighbours is not None:
            extra = [{"path": p, "text": t} for p, t in neighbours.items() if p != task.path]
        started = time.perf_counter()
        done = engine.complete(task.prefix, suffix=task.suffix if fim else None, params=params, extra_context=extra)
        latencies.append(time.perf_counter() - started)
        prediction = done.text.split("\n")[0].rstrip()
        exact.append(prediction == task.target)
        similarity.append(edit_similarity(prediction, task.target))
    n = max(1, len(tasks))
    return {"lines": len(tasks), "exact_match": round(sum(exact) / n, 4),
            "edit_similarity": round(sum(similarity) / n, 4),
            "latency_ms_p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "latency_ms_mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def read_python_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(Path(folder).rglob("*.py"))}


def cache_only_completion(tokenizer, task: LineTask, fim: bool, neighbours: dict[str, str] | None,
                          max_tokens: int = 48) -> str:
    """The cache alone, no network: greedy over the n-gram cache's longest-context predictions."""
    from engine.cache_model import NgramCache

    cache = NgramCache()
    # Like the engine's token healing: the indentation the prefix ends with is re-generated, since
    # the file's own text glues it to the next word.
    history = tokenizer.encode(task.prefix.rstrip(" \t"))
    for path, text in (neighbours or {}).items():
        if path != task.path:
            cache.add_sequence(tokenizer.encode(text))
    if fim:
        cache.add_sequence(tokenizer.encode(task.suffix))
    cache.add_sequence(history)
    out: list[int] = []
    for _ in range(max_tokens):
        _, following = cache.predict(history + out)
        if following is None:
            break
        ids, counts = np.unique(following, return_counts=True)
        out.append(int(ids[np.argmax(counts)]))  # the most frequent; ties go to the lowest id
        cache.append(out[-1])
        text = tokenizer.decode(out).lstrip(" \t")
        if "\n" in text.lstrip("\n"):
            break
    return tokenizer.decode(out).lstrip(" \t\n")


def score_cache_only(tokenizer, tasks: list[LineTask], fim: bool = False,
                     neighbours: dict[str, str] | None = None) -> dict:
    exact, similarity = [], []
    for task in tasks:
        # The prefix ends at the line's indentation, which the cache (like the network) sees as one chunk.
        prediction = cache_only_completion(tokenizer, task, fim, neighbours).split("\n")[0].rstrip()
        exact.append(prediction == task.target)
        similarity.append(edit_similarity(prediction, task.target))
    n = max(1, len(tasks))
    return {"lines": len(tasks), "exact_match": round(sum(exact) / n, 4),
            "edit_similarity": round(sum(similarity) / n, 4)}


def line_completion_report(model_dir: Path, folders: list[Path], per_file: int, quantize: str | None,
                           variants: list[str] | None = None) -> dict:
    """Every variant the model card reports, on each held-out project (its other files = neighbours)."""
    from engine import EngineConfig

    engine = Engine.load(model_dir, quantize=quantize, config=EngineConfig(max_batch=4))
    report: dict[str, dict] = {}
    try:
        tasks_by_project = {}
        for folder in folders:
            files = read_python_files(folder)
            tasks_by_project[folder.name] = (sample_tasks(files, per_file), files)
        runs = {
            "network": dict(fim=False, cache_weight=0.0),
            "network_fim": dict(fim=True, cache_weight=0.0),
            "network+cache": dict(fim=False, cache_weight=None),
            "network+cache_fim": dict(fim=True, cache_weight=None),
            "network+cache_fim+neighbours": dict(fim=True, cache_weight=None, neighbours=True),
        }
        for name, options in runs.items():
            if variants and name not in variants:
                continue
            results = []
            for tasks, files in tasks_by_project.values():
                results.append(run_line_completion(engine, tasks, fim=options["fim"],
                                                   cache_weight=options["cache_weight"],
                                                   neighbours=files if options.get("neighbours") else None,
                                                   desc=name))
            report[name] = _pool(results)
        if not variants or "cache_only_fim+neighbours" in variants:
            for name, fim, use_neighbours in (("cache_only", False, False), ("cache_only_fim+neighbours", True, True)):
                results = [score_cache_only(engine.tokenizer, tasks, fim, files if use_neighbours else None)
                           for tasks, files in tasks_by_project.values()]
                report[name] = _pool(results)
    finally:
        engine.close()
    return report


def _pool(results: list[dict]) -> dict:
    """Line-weighted averages over projects."""
    total = sum(r["lines"] for r in results) or 1
    pooled = {"lines": total}
    for key in ("exact_match", "edit_similarity", "latency_ms_mean"):
        if all(key in r and r[key] is not None for r in results):
            pooled[key] = round(sum(r[key] * r["lines"] for r in results) / total, 4 if key != "latency_ms_mean" else 1)
    return pooled
