"""The default model on one GPU in a fixed time: `scripts/train-default-on-gpu.sh OUT`.

One command, in phases, each timed against one deadline (`--minutes`):
  data     this Python's stdlib and site-packages (or `--src`), deduplicated, split by file, capped
           at `--max-source-mb` so that tokenizing fits, the code BPE trained on a sample of it;
  warmup   a few timed steps of the model at each candidate batch size (and compiled, on CUDA),
           which choose the batch, whether `torch.compile` pays, and the step count that fits;
  train    `training.train.train` (Lightning, bf16-mixed on CUDA), stopping at that step count or
           the time left, whichever comes first (the learning rate anneals to either);
  export   the Hugging Face directory in bf16 and its int8 copy, safetensors in shards, packed into
           tar volumes so that OUT holds at most 8 files of at most 16 MiB (the device's limits);
  eval     bits per byte and line completion on the held-out projects, the fibonacci example.
It ends with OUT/summary.json, also printed as the last line of stdout.

The project runs from PYTHONPATH, not installed, on the machine's own Python: this path imports
torch, lightning, numpy, tiktoken, regex, tokenizers, safetensors, yaml, tqdm, matplotlib and
pathspec (all on the GPU machines this project borrows), never fastapi, pygls or pydantic.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from engine.model import Transformer

from .config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
HELDOUT = REPO / "tests" / "data" / "heldout"
FIBONACCI = "def fibonacci(n):\n    if n <= 1:\n        return n\n    "

# What comes back from a borrowed GPU machine (/work/.library/device/README.md): at most 8 files
# of at most 16 MiB, 64 MiB together. Shards and volumes stay a little under the per-file limit.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 << 20, 64 << 20
SHARD_BYTES, VOLUME_BYTES = 7 << 20, 15 << 20

# Dense bf16 peak of the cards an MFU is reported for (vendor figures, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class Recipe:
    out: Path
    config: Path
    sources: list[Path]
    work: Path | None = None          # data, checkpoints, unpacked model directories (default: a temp folder)
    minutes: float = 9.0              # the whole command: data to summary
    max_source_mb: int = 256
    bpe_sample_mb: int = 32
    vocab_size: int = 8192
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128)
    steps_per_candidate: int = 10     # timed warm-up steps per batch size (and compiled), after one untimed
    compile: str = "auto"             # auto: measured in the warm-up, on CUDA only; yes; no
    reserve_seconds: float = 180.0    # kept after training for export, int8 and eval (an estimate for an H100 machine)
    heldout: Path = HELDOUT
    lines_per_file: int = 20          # as models/default/MODEL_CARD.md samples them
    eval_windows: int | None = None   # context windows of held-out text for bits per byte (None: all)
    fibonacci_tokens: int = 48


def default_sources() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(p) for p in dict.fromkeys([paths["stdlib"], paths["purelib"], paths["platlib"]]) if Path(p).is_dir()]


class Clock:
    """Wall time per phase, against one deadline."""

    def __init__(self, minutes: float):
        self.started = time.monotonic()
        self.deadline = self.started + minutes * 60
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        print(f"== {name} ({self.elapsed():.0f} s elapsed, {self.left():.0f} s left)", flush=True)
        started = time.monotonic()
        yield
        self.phases[name] = round(time.monotonic() - started, 1)
        print(f"== {name} done in {self.phases[name]} s", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ---- data ---------------------------------------------------------------------------------------
def build_data(recipe: Recipe, data_dir: Path) -> dict:
    from .data import SKIP_DIRS, CollectOptions, build_dataset

    # The held-out projects are never trained on, even where this machine has them installed (toolz).
    held_out = frozenset(p.name for p in recipe.heldout.iterdir() if p.is_dir())
    options = CollectOptions(skip_dirs=SKIP_DIRS | held_out, max_total_bytes=recipe.max_source_mb << 20)
    meta = build_dataset(recipe.sources, data_dir, recipe.vocab_size, options,
                         bpe_sample_bytes=recipe.bpe_sample_mb << 20)
    splits = {name: {k: s[k] for k in ("files", "bytes", "tokens")} for name, s in meta["splits"].items()}
    print(f"data: {json.dumps(splits)}", flush=True)
    return {"sources": [str(s) for s in recipe.sources], "max_source_bytes": recipe.max_source_mb << 20,
            "excluded": sorted(held_out), "skipped": meta["skipped"], **splits}


# ---- warm-up ------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(config: TrainConfig, batch_size: int, seq_len: int, device: str, compiled: bool,
                steps: int) -> dict:
    """Tokens per second of full training steps (forward, backward, AdamW) on random tokens; the
    first step, which compiles, is timed apart."""
    torch.manual_seed(0)
    model = Transformer(config.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model
    batch = torch.randint(0, config.model.vocab_size, (batch_size, seq_len + 1), device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            logits = forward(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        started = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - started
    finally:
        del model, optimizer, forward, batch
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"batch_size": batch_size, "compiled": compiled, "first_step_seconds": round(first, 2),
            "tokens_per_second": round(batch_size * seq_len * steps / seconds, 1)}


def choose_batch_and_compile(recipe: Recipe, config: TrainConfig, seq_len: int, device: str,
                             train_seconds: float) -> dict:
    """The batch size (the smallest within 5 % of the fastest: more steps for the same tokens)
    and whether compiling pays for its own compile time over `train_seconds`."""
    eager = []
    for batch_size in recipe.batch_sizes:
        try:
            eager.append(timed_steps(config, batch_size, seq_len, device, False, recipe.steps_per_candidate))
        except torch.cuda.OutOfMemoryError:
            print(f"warmup: batch {batch_size} does not fit in memory", flush=True)
            break
        print(f"warmup: batch {batch_size}: {eager[-1]['tokens_per_second']:,.0f} tokens/s", flush=True)
    if not eager:
        raise RuntimeError(f"no batch size of {recipe.batch_sizes} fits in memory")
    fastest = max(r["tokens_per_second"] for r in eager)
    chosen = next(r for r in eager if r["tokens_per_second"] >= 0.95 * fastest)
    result = {"candidates": eager, "batch_size": chosen["batch_size"], "compile": False,
              "tokens_per_second": chosen["tokens_per_second"]}
    if recipe.compile == "yes" or (recipe.compile == "auto" and device == "cuda"):
        compiled = timed_steps(config, chosen["batch_size"], seq_len, device, True, recipe.steps_per_candidate)
        compile_seconds = max(0.0, compiled["first_step_seconds"] - chosen["first_step_seconds"])
        # Pays when the compiled run, started compile_seconds later, still sees more tokens.
        pays = compiled["tokens_per_second"] * max(0.0, train_seconds - compile_seconds) > \
            chosen["tokens_per_second"] * train_seconds
        print(f"warmup: compiled {compiled['tokens_per_second']:,.0f} tokens/s after {compile_seconds:.0f} s "
              f"compiling: {'compile' if pays or recipe.compile == 'yes' else 'eager'}", flush=True)
        result.update(compiled_run=compiled, compile_seconds=round(compile_seconds, 1),
                      compile=pays or recipe.compile == "yes")
        if result["compile"]:
            result["tokens_per_second"] = compiled["tokens_per_second"]
    return result


# ---- training -----------------------------------------------------------------------------------
class ProgressLog(Callback):
    """A line every `every_seconds`: step, loss, tokens/s since the last line."""

    def __init__(self, tokens_per_step: int, max_steps: int, every_seconds: float):
        self.tokens_per_step, self.max_steps, self.every = tokens_per_step, max_steps, every_seconds
        self.last_time, self.last_step = None, 0

    def on_train_start(self, trainer, module):
        self.last_time, self.last_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        now, step = time.monotonic(), trainer.global_step
        if now - self.last_time < self.every and step < self.max_steps:
            return
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float("nan")
        rate = (step - self.last_step) * self.tokens_per_step / max(now - self.last_time, 1e-9)
        print(f"train: step {step}/{self.max_steps}  loss {loss:.3f}  {rate:,.0f} tokens/s  "
              f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}", flush=True)
        self.last_time, self.last_step = now, step


def flops_per_token(config) -> float:
    """Training FLOPs per token: 6 per weight used in a matmul (forward and backward) plus attention
    (PaLM's appendix B: 12 x layers x heads x head_dim x sequence length)."""
    with torch.device("meta"):
        model = Transformer(config)
    matmul_weights = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    if config.tie_embeddings:
        matmul_weights += model.embed.weight.numel()
    return 6 * matmul_weights + 12 * config.n_layer * config.n_head * config.head_dim * config.block_size


def peak_flops(device: str) -> tuple[str, float | None]:
    if device != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((peak for card, peak in PEAK_BF16_FLOPS.items() if card in name), None)


# ---- export -------------------------------------------------------------------------------------
def reshard(src: Path, dst: Path, max_shard_bytes: int, dtype: torch.dtype | None = None) -> Path:
    """A copy of a model directory with its weights in safetensors shards of at most
    `max_shard_bytes` and an index (Hugging Face's layout), floats cast to `dtype` if given."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from engine.model_dir import CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX

    dst.mkdir(parents=True, exist_ok=True)
    with safe_open(str(src / WEIGHTS_FILE), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if dtype is not None:
        tensors = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and sum(t.numel() * t.element_size() for t in shards[-1].values()) + size > max_shard_bytes:
            shards.append({})
        shards[-1][name] = tensor
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.contiguous() for n, t in shard.items()}, str(dst / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config = json.loads((src / CONFIG_FILE).read_text())
    if dtype is not None:
        config.update({k: str(dtype).removeprefix("torch.") for k in ("torch_dtype", "dtype") if k in config})
    (dst / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    for path in src.iterdir():
        if path.is_file() and path.name not in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copyfile(path, dst / path.name)
    return dst


def pack_volumes(folders: dict[str, Path], out: Path, volume_bytes: int) -> list[Path]:
    """The folders' files in as few tar volumes of at most `volume_bytes` as first-fit finds, each
    a whole tar of whole files under the folder's name: extract every volume into one place."""
    files = sorted(((name, path) for name, folder in folders.items() for path in folder.iterdir() if path.is_file()),
                   key=lambda item: -item[1].stat().st_size)
    volumes: list[list[tuple[str, Path]]] = []
    sizes: list[int] = []
    for name, path in files:
        size = path.stat().st_size + 1024  # the tar header and padding
        if size > volume_bytes:
            raise ValueError(f"{path} is {size} bytes, more than a volume ({volume_bytes})")
        i = next((i for i, used in enumerate(sizes) if used + size <= volume_bytes - 10240), None)
        if i is None:
            volumes.append([])
            sizes.append(0)
            i = len(volumes) - 1
        volumes[i].append((name, path))
        sizes[i] += size
    paths = []
    for i, members in enumerate(volumes, 1):
        path = out / f"models-{i}-of-{len(volumes)}.tar"
        with tarfile.open(path, "w") as tar:
            for name, file in sorted(members, key=lambda m: (m[0], m[1].name)):
                tar.add(file, arcname=f"{name}/{file.name}")
        paths.append(path)
    return paths


def export(trained: Path, work: Path, out: Path) -> tuple[Path, Path, list[Path]]:
    """The trained model directory (fp32) as `work/model` (bf16) and `work/model-int8`, both in
    shards, packed into OUT's tar volumes (replacing an earlier run's)."""
    from engine.quantize import write_int8_model_dir

    hf_dir = reshard(trained, work / "model", SHARD_BYTES, torch.bfloat16)
    int8_dir = reshard(write_int8_model_dir(trained, work / "int8-single"), work / "model-int8", SHARD_BYTES)
    for old in out.glob("models-*.tar"):
        old.unlink()
    return hf_dir, int8_dir, pack_volumes({"model": hf_dir, "model-int8": int8_dir}, out, VOLUME_BYTES)


def check_outputs(out: Path) -> dict[str, int]:
    """OUT's files and sizes, or a ValueError naming the limit it breaks."""
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    if len(files) > MAX_FILES:
        raise ValueError(f"{out} holds {len(files)} files, more than {MAX_FILES}: {', '.join(files)}")
    too_big = [name for name, size in files.items() if size > MAX_FILE_BYTES]
    if too_big:
        raise ValueError(f"{too_big[0]} is {files[too_big[0]]} bytes, more than {MAX_FILE_BYTES}")
    if sum(files.values()) > MAX_TOTAL_BYTES:
        raise ValueError(f"{out} holds {sum(files.values())} bytes, more than {MAX_TOTAL_BYTES}")
    return files


# ---- evaluation ---------------------------------------------------------------------------------
def evaluate_model(recipe: Recipe, hf_dir: Path, int8_dir: Path) -> dict:
    from engine import Engine, EngineConfig, SamplingParams

    from .evaluate import evaluate
    from .line_completion import line_completion_report

    projects = sorted(p for p in recipe.heldout.iterdir() if p.is_dir())
    result = {"heldout_bits_per_byte": evaluate(hf_dir, src=projects, max_windows=recipe.eval_windows)["bits_per_byte"]}
    print(f"eval: held-out bits per byte {result['heldout_bits_per_byte']}", flush=True)
    report = line_completion_report(int8_dir, projects, recipe.lines_per_file, "int8",
                                    variants=["network+cache_fim", "network+cache_fim+workspace"], loops=False)
    result["line_completion"] = {"file_only": report["network+cache_fim"],
                                 "workspace": report["network+cache_fim+workspace"],
                                 "projects": [p.name for p in projects], "lines_per_file": recipe.lines_per_file}
    print(f"eval: line completion {json.dumps(result['line_completion'])}", flush=True)
    engine = Engine.load(int8_dir, quantize="int8", config=EngineConfig(max_batch=1))
    try:
        done = engine.complete(FIBONACCI, params=SamplingParams(max_tokens=recipe.fibonacci_tokens, temperature=0.0))
    finally:
        engine.close()
    result["fibonacci"] = {"prompt": FIBONACCI, "completion": done.text}
    print(f"eval: fibonacci completion {done.text!r}", flush=True)
    return result


def transformers_check(hf_dir: Path) -> dict:
    """The largest logit difference between the engine and transformers on the exported directory."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        return {"skipped": f"transformers is not importable: {e}"}
    from engine.model_dir import load_model_dir

    ours, tokenizer, _ = load_model_dir(hf_dir)
    try:
        theirs = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except Exception as e:  # another transformers than ours: recorded, and the run goes on to its eval
        return {"error": f"transformers could not load {hf_dir}: {type(e).__name__}: {e}"}
    ids = tokenizer.encode(FIBONACCI * 4)[:ours.config.block_size]
    with torch.no_grad():
        diff = (ours(torch.tensor([ids])) - theirs(torch.tensor([ids])).logits).abs().max().item()
    return {"class": type(theirs).__name__, "max_abs_logit_diff": diff}


def third_party_modules() -> list[str]:
    """Top-level packages this run imported from outside the standard library and the project."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    names = set()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or not file:
            continue
        path = Path(file).resolve()
        installed = "-packages" in path.as_posix()
        if not installed and (REPO in path.parents or stdlib in path.parents):
            continue
        names.add(name)
    return sorted(n for n in names if not n.startswith("_"))


# ---- the recipe ---------------------------------------------------------------------------------
def run(recipe: Recipe) -> dict:
    from .train import train

    clock = Clock(recipe.minutes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
    recipe.out.mkdir(parents=True, exist_ok=True)
    work = recipe.work or Path(tempfile.mkdtemp(prefix="code-assistant-recipe-"))
    data_dir, run_dir = work / "data", work / "train"
    config = load_config(recipe.config)
    summary: dict = {"recipe": "scripts/train-default-on-gpu.sh", "config": str(recipe.config), "device": device,
                     "torch": torch.__version__, "budget_minutes": recipe.minutes}

    def save() -> None:
        """summary.json as far as the run got: a run stopped by the machine's time limit still says why."""
        summary["wall_seconds"] = {**clock.phases, "total": round(clock.elapsed(), 1)}
        (recipe.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    with clock.phase("data"):
        summary["data"] = build_data(recipe, data_dir)
    save()

    from .data import read_meta

    model_config = dataclasses.replace(config.model, vocab_size=read_meta(data_dir)["tokenizer"]["n_vocab"])
    config = dataclasses.replace(config, model=model_config)
    seq_len = config.model.block_size
    with clock.phase("warmup"):
        # The warm-up's own time comes out of training's; estimate it as a tenth of what is left.
        expected_train = clock.left() - recipe.reserve_seconds
        warmup = choose_batch_and_compile(recipe, config, seq_len, device, 0.9 * expected_train)
    train_seconds = clock.left() - recipe.reserve_seconds
    if train_seconds <= 0:
        raise ValueError(f"no time left to train: --minutes {recipe.minutes} is spent by data and warm-up "
                         f"({clock.elapsed():.0f} s) and the {recipe.reserve_seconds:.0f} s kept for export and eval")
    tokens_per_step = warmup["batch_size"] * seq_len
    steps = max(1, min(config.trainer.max_steps, int(warmup["tokens_per_second"] * train_seconds / tokens_per_step)))
    trainer = dataclasses.replace(config.trainer, max_steps=steps, max_time_minutes=train_seconds / 60,
                                  compile=warmup["compile"],
                                  val_check_interval=min(config.trainer.val_check_interval, steps))
    optim = dataclasses.replace(config.optim, warmup_steps=min(config.optim.warmup_steps, max(1, steps // 20)))
    config = dataclasses.replace(config, trainer=trainer, optim=optim,
                                 data=dataclasses.replace(config.data, batch_size=warmup["batch_size"]))
    summary["warmup"] = {**warmup, "planned_steps": steps, "train_seconds": round(train_seconds, 1)}
    save()
    print(f"plan: {steps} steps of {warmup['batch_size']} x {seq_len} tokens in at most {train_seconds:.0f} s "
          f"(compile: {warmup['compile']})", flush=True)

    with clock.phase("train"):
        progress = ProgressLog(tokens_per_step, steps, every_seconds=10 if device == "cuda" else 2)
        trained = train(config, data_dir, run_dir, callbacks=(progress,), progress_bar=False)
    fpt = flops_per_token(config.model)
    card, peak = peak_flops(device)
    tokens_seen = trained["steps"] * tokens_per_step
    summary["train"] = {"steps": trained["steps"], "tokens_seen": tokens_seen, "tokens_per_second": trained["tokens_per_second"],
                        "flops_per_token": fpt, "device_name": card, "peak_flops": peak,
                        "mfu": round(trained["tokens_per_second"] * fpt / peak, 4) if peak else None,
                        "val_loss": round(trained["best_val_loss"], 4), "val_bpb": round(trained["val_bpb"], 4),
                        "precision": trained["precision"], "compiled": config.trainer.compile}
    summary["model"] = {**{k: getattr(config.model, k) for k in ("arch", "n_layer", "n_head", "n_kv_head", "n_embd",
                                                                 "intermediate_size", "block_size", "vocab_size")},
                        "params": sum(p.numel() for p in Transformer(config.model).parameters())}
    save()

    with clock.phase("export"):
        hf_dir, int8_dir, volumes = export(run_dir, work, recipe.out)
        curve = run_dir / "run" / "loss_curve.png"
        if curve.is_file():
            shutil.copyfile(curve, recipe.out / "loss_curve.png")
        summary["export"] = {"volumes": [v.name for v in volumes], "unpack": "for v in models-*.tar; do tar xf $v; done",
                             "hf": "model/ (bf16)", "int8": "model-int8/", "work": str(run_dir) if recipe.work else None}
        summary["transformers"] = transformers_check(hf_dir)
        print(f"export: transformers {json.dumps(summary['transformers'])}", flush=True)
    save()

    with clock.phase("eval"):
        summary["eval"] = evaluate_model(recipe, hf_dir, int8_dir)

    summary["imported_packages"] = third_party_modules()
    save()
    summary["outputs"] = check_outputs(recipe.out)
    save()
    if recipe.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return summary


SMOKE = dict(config=CONFIGS / "gpu-smoke.yaml", minutes=3.0, max_source_mb=1, bpe_sample_mb=1, vocab_size=512,
             batch_sizes=(4, 8), steps_per_candidate=1, compile="no", reserve_seconds=60.0, lines_per_file=1,
             eval_windows=4, fibonacci_tokens=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/train-default-on-gpu.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder: summary.json, loss_curve.png, models-K-of-N.tar")
    parser.add_argument("--src", action="append", type=Path, help="source folder (repeatable; default: this "
                        "Python's stdlib and site-packages)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps, on the CPU: checks the chain")
    parser.add_argument("--config", type=Path, help="training YAML (default: training/configs/gpu-default.yaml)")
    parser.add_argument("--work", type=Path, help="folder for data and checkpoints (default: a temporary one)")
    parser.add_argument("--minutes", type=float, help="time budget of the whole command (default 9)")
    parser.add_argument("--max-source-mb", type=int, help="source text tokenized at most (default 256)")
    parser.add_argument("--compile", choices=["auto", "yes", "no"], help="torch.compile (default: auto)")
    parser.add_argument("--lines-per-file", type=int, help="held-out lines scored per file (default 20)")
    args = parser.parse_args(argv)
    fields = dict(SMOKE) if args.smoke else {"config": CONFIGS / "gpu-default.yaml"}
    for name in ("config", "work", "minutes", "max_source_mb", "compile", "lines_per_file"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.smoke and not args.src:
        parser.error("--smoke needs a small --src folder")
    recipe = Recipe(out=args.out, sources=args.src or default_sources(), **fields)
    try:
        summary = run(recipe)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"train-default-on-gpu: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
