"""Line completion, CodeXGLUE line-level style, through the engine as users call it.

For sampled lines of held-out files the model gets the file up to the line's indentation (and, in
the FIM variant, the rest of the file after the line as suffix), greedy-completes to the end of the
line, and is scored by exact match and edit similarity (1 - Levenshtein distance / longer length).
"Workspace" variants index the whole project folder, as the language server indexes the editor's
workspace, and name the file being completed so that its own (answer-holding) copy is left out.

Reporting lines are sampled with seed 0; the lines `tune_mix` tunes the cache mix on with seed 1,
minus every reporting line, so no line is in both. `loop_rate` counts 64-token multi-line
completions at the reporting lines that repeat themselves (engine/repetition.py `has_loop`).
"""
from __future__ import annotations

import itertools
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine import ContextFile, Engine, SamplingParams
from engine.cache_model import MixConfig
from engine.repetition import has_loop
from engine.workspace import WorkspaceIndex
from project_files.indexing import ProjectIndex

REPORT_SEED, TUNING_SEED = 0, 1


@dataclass
class LineTask:
    path: str
    prefix: str      # the file up to the line's indentation, inclusive
    target: str      # the rest of the line, trailing whitespace removed
    suffix: str      # everything after the line (from its newline on)
    line: int = 0    # the line's index in its file


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


def sample_tasks(files: dict[str, str], per_file: int, seed: int = REPORT_SEED,
                 leave_out: set[tuple[str, int]] = frozenset()) -> list[LineTask]:
    """`per_file` lines of each file; `leave_out`: (path, line) pairs never sampled."""
    rng = random.Random(seed)
    tasks = []
    for path in sorted(files):
        text = files[path]
        lines = text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        candidates = [i for i, line in enumerate(lines) if i > 0 and is_scorable(line) and (path, i) not in leave_out]
        for i in sorted(rng.sample(candidates, min(per_file, len(candidates)))):
            line = lines[i]
            indent = len(line) - len(line.lstrip(" \t"))
            body = line[indent:].rstrip("\r\n")
            tasks.append(LineTask(path, text[:offsets[i] + indent], body.rstrip(),
                                  text[offsets[i] + len(line.rstrip("\r\n")):], i))
    return tasks


def tuning_tasks(files: dict[str, str], per_file: int, report_per_file: int) -> list[LineTask]:
    """Lines to tune on: a second sample that leaves out every reporting line."""
    reported = {(t.path, t.line) for t in sample_tasks(files, report_per_file, REPORT_SEED)}
    return sample_tasks(files, per_file, TUNING_SEED, leave_out=reported)


def project_workspace(engine: Engine, folder: Path) -> WorkspaceIndex:
    """The project folder indexed as the language server indexes an editor's workspace."""
    project = ProjectIndex([folder], engine.tokenizer)
    project.build()
    return project.index


def run_line_completion(engine: Engine, tasks: list[LineTask], fim: bool = False,
                        cache_weight: float | None = None, neighbours: dict[str, str] | None = None,
                        max_tokens: int = 48, desc: str = "lines", workspace: WorkspaceIndex | None = None,
                        folder: Path | None = None) -> dict:
    """Score `tasks`; `neighbours` maps a path to the other files' texts given as extra context;
    `workspace` (over `folder`) is the engine's workspace index while they run."""
    exact, similarity, latencies = [], [], []
    engine.use_workspace(workspace)
    for task in tqdm(tasks, desc=desc, unit="line", leave=False):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=["\n"], cache_weight=cache_weight)
        extra = None
        if neighbours is not None:
            extra = tuple(ContextFile(p, t) for p, t in neighbours.items() if p != task.path)
        path = task.path if folder is not None else None   # as an editor names it: relative to the root
        started = time.perf_counter()
        done = engine.complete(task.prefix, suffix=task.suffix if fim else None, params=params, files=extra or (),
                               path=path)
        latencies.append(time.perf_counter() - started)
        prediction = done.text.split("\n")[0].rstrip()
        exact.append(prediction == task.target)
        similarity.append(edit_similarity(prediction, task.target))
    engine.use_workspace(None)
    n = max(1, len(tasks))
    return {"lines": len(tasks), "exact_match": round(sum(exact) / n, 4),
            "edit_similarity": round(sum(similarity) / n, 4),
            "latency_ms_p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "latency_ms_mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def loop_rate(engine: Engine, tasks: list[LineTask], workspace: WorkspaceIndex | None = None,
              folder: Path | None = None, max_tokens: int = 64, stop_loops: bool | None = None,
              desc: str = "loops") -> dict:
    """Share of `max_tokens`-token multi-line FIM completions at `tasks` that repeat themselves."""
    loops, examples = 0, []
    engine.use_workspace(workspace)
    for task in tqdm(tasks, desc=desc, unit="completion", leave=False):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_loops=stop_loops)
        path = task.path if folder is not None else None
        text = engine.complete(task.prefix, suffix=task.suffix, params=params, path=path).text
        context = task.prefix[task.prefix.rfind("\n", 0, max(0, len(task.prefix) - 1)) + 1:]
        if has_loop(text, context):
            loops += 1
            if len(examples) < 3:
                examples.append(text[:200])
    engine.use_workspace(None)
    return {"completions": len(tasks), "loops": loops, "loop_rate": round(loops / max(1, len(tasks)), 4),
            "examples": examples}


def read_python_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(Path(folder).rglob("*.py"))}


def cache_only_completion(tokenizer, task: LineTask, fim: bool, neighbours: dict[str, str] | None,
                          max_tokens: int = 48) -> str:
    """The cache alone, no network: greedy over the longest match's most frequent next token."""
    from engine.suffix_index import SuffixIndex

    # Like the engine's token healing: the indentation the prefix ends with is re-generated, since
    # the file's own text glues it to the next word.
    history = tokenizer.encode(task.prefix.rstrip(" \t"))
    documents = [tokenizer.encode(text) for path, text in (neighbours or {}).items() if path != task.path]
    if fim:
        documents.append(tokenizer.encode(task.suffix))
    index = SuffixIndex.build(documents + [history])
    out: list[int] = []
    for _ in range(max_tokens):
        match = index.longest_match(history + out)
        if not match.found:
            break
        out.append(int(match.ids[np.argmax(match.counts)]))  # the most frequent; ties go to the lowest id
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


VARIANTS = {
    "network": dict(fim=False, cache_weight=0.0),
    "network_fim": dict(fim=True, cache_weight=0.0),
    "network+cache": dict(fim=False, cache_weight=None),
    "network+cache_fim": dict(fim=True, cache_weight=None),              # only the file: what an editor has alone
    "network+cache_fim+neighbours": dict(fim=True, cache_weight=None, neighbours=True),
    "network+cache_fim+workspace": dict(fim=True, cache_weight=None, workspace=True),
}


def line_completion_report(model_dir: Path, folders: list[Path], per_file: int, quantize: str | None,
                           variants: list[str] | None = None, loops: bool = True) -> dict:
    """Every variant the model card reports, on each held-out project (its other files = neighbours,
    or the project folder = the workspace), and the loop rate with and without the workspace."""
    from engine import EngineConfig

    engine = Engine.load(model_dir, quantize=quantize, config=EngineConfig(max_batch=4))
    report: dict[str, dict] = {}
    try:
        projects = {}
        for folder in folders:
            files = read_python_files(folder)
            projects[folder.name] = (folder, sample_tasks(files, per_file), files, project_workspace(engine, folder))
        for name, options in VARIANTS.items():
            if variants and name not in variants:
                continue
            results = []
            for folder, tasks, files, workspace in projects.values():
                use_workspace = options.get("workspace")
                results.append(run_line_completion(engine, tasks, fim=options["fim"],
                                                   cache_weight=options["cache_weight"],
                                                   neighbours=files if options.get("neighbours") else None,
                                                   desc=name, workspace=workspace if use_workspace else None,
                                                   folder=folder if use_workspace else None))
            report[name] = _pool(results)
        if loops:
            for name, use_workspace, stop in (("loops_file_only", False, None), ("loops_workspace", True, None),
                                              ("loops_file_only_no_stop", False, False),
                                              ("loops_workspace_no_stop", True, False)):
                if variants and name not in variants:
                    continue
                results = [loop_rate(engine, tasks, workspace if use_workspace else None,
                                     folder if use_workspace else None, stop_loops=stop, desc=name)
                           for folder, tasks, files, workspace in projects.values()]
                report[name] = {"completions": sum(r["completions"] for r in results),
                                "loops": sum(r["loops"] for r in results),
                                "examples": [e for r in results for e in r["examples"]][:4]}
                report[name]["loop_rate"] = round(report[name]["loops"] / max(1, report[name]["completions"]), 4)
        if not variants or "cache_only_fim+neighbours" in variants:
            for name, fim, use_neighbours in (("cache_only", False, False), ("cache_only_fim+neighbours", True, True)):
                results = [score_cache_only(engine.tokenizer, tasks, fim, files if use_neighbours else None)
                           for folder, tasks, files, workspace in projects.values()]
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


# The grid `tune_mix` searches: the trust curve's midpoint and steepness, the weight of frequency,
# the suffix's penalty and the cap. Small on purpose: every point is a full run over the tuning lines.
TUNING_GRID = {"half_length": (1.0, 2.0, 3.0, 4.0), "slope": (0.75, 1.5, 3.0), "frequency": (0.0, 0.5),
               "suffix_penalty": (0.0, 1.0), "weight": (0.97,)}


def tune_mix(model_dir: Path, folders: list[Path], per_file: int, quantize: str | None,
             report_per_file: int = 20, grid: dict | None = None) -> dict:
    """Every point of the grid on the tuning lines (FIM + the project as workspace); the best by
    edit similarity, exact match breaking ties."""
    from engine import EngineConfig

    grid = grid or TUNING_GRID
    engine = Engine.load(model_dir, quantize=quantize, config=EngineConfig(max_batch=4))
    try:
        projects = []
        for folder in folders:
            files = read_python_files(folder)
            projects.append((folder, tuning_tasks(files, per_file, report_per_file), project_workspace(engine, folder)))
        points = []
        keys = list(grid)
        combos = list(itertools.product(*(grid[k] for k in keys)))
        for values in tqdm(combos, desc="grid", unit="point"):
            point = dict(zip(keys, values))
            engine.config.cache_mix = MixConfig(weight=point["weight"], half_length=point["half_length"],
                                                slope=point["slope"], frequency=point["frequency"],
                                                penalty={"suffix": point["suffix_penalty"]})
            engine.config.cache_weight = point["weight"]
            results = [run_line_completion(engine, tasks, fim=True, workspace=workspace, folder=folder, desc="tune")
                       for folder, tasks, workspace in projects]
            points.append({**point, **_pool(results)})
        points.sort(key=lambda p: (p["edit_similarity"], p["exact_match"]), reverse=True)
        return {"lines": points[0]["lines"], "best": points[0], "points": points}
    finally:
        engine.close()
