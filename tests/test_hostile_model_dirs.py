"""A model directory is input from anyone: every file the loaders read is tried as an attacker would
write it (config values of the wrong type or far out of range, JSON nested 100,000 deep, shard paths
out of the directory, safetensors headers that lie, tokenizer junk, int8 weights without scales...).

Each case runs the real CLI as a process of its own, under a memory limit and a time limit, and
must end with exit 2 and one line on stderr that names the file at fault: never a traceback, never
a model loaded from outside the directory, never memory that grows with what a file claims. The
commands that load a model (eval, quantize, serve, lsp, bench engine) take the cases in turn.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.model import ARCHITECTURES
from engine.quantize import write_int8_model_dir

from .conftest import STDLIB, make_model_dir

REPO = Path(__file__).resolve().parents[1]
# The CLI with torch imported peaks near 250 MB resident (350 MB for `bench`); a loader that sizes
# anything by what a file claims goes far past this.
MEMORY_LIMIT_BYTES = 8 << 30     # address space (torch's libraries map ~2 GB of it unused)
PEAK_RSS_LIMIT_MB = 600
TIME_LIMIT_S = 90                # on an idle machine each case takes 3 to 6 s, mostly importing torch
COMMANDS = ["eval", "quantize", "serve", "lsp", "bench-engine"]


def command_line(command: str, model: Path, tmp: Path) -> list[str]:
    return {"eval": ["eval", "--model", model, "--src", STDLIB / "json"],
            "quantize": ["quantize", "--model", model, "--out", tmp / "q"],
            "serve": ["serve", "--model", model, "--port", "0"],
            "lsp": ["lsp", "--model", model],
            "bench-engine": ["bench", "engine", "--model", model, "--quick", "--out", tmp / "b"]}[command]


# The CLI runs as the child of this small launcher, not of pytest: Linux keeps a process's resident
# high-water mark across exec, so a process forked from pytest (grown to ~800 MB late in the suite)
# would report pytest's pages as its own peak.
LAUNCHER = """
import os, resource, signal, sys
limit, seconds = int(sys.argv[1]), int(sys.argv[2])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, "-m", "code_assistant_cli", *sys.argv[3:]])
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(seconds)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def run_bounded(args: list) -> tuple[int, str, float, float]:
    """(exit code, stderr, seconds, peak resident MB of that process) of the CLI under the limits."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(MEMORY_LIMIT_BYTES), str(TIME_LIMIT_S),
                           *map(str, args)], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIME_LIMIT_S + 30)
    code, max_rss_kb = map(int, done.stdout.split())
    if code == -9:
        raise AssertionError(f"{args[0]} still ran after {TIME_LIMIT_S} s")
    return code, done.stderr.decode(errors="replace"), time.monotonic() - started, max_rss_kb / 1024


# ---- the cases ------------------------------------------------------------------------------------
def edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def config_text(model: Path, key: str, raw_value: str) -> None:
    """A config.json value written as raw JSON text (NaN, Infinity, deep nesting)."""
    config = json.loads((model / "config.json").read_text())
    config[key] = "PLACEHOLDER"
    (model / "config.json").write_text(json.dumps(config).replace('"PLACEHOLDER"', raw_value))


def drop_rope_keys(model: Path) -> None:
    edit_config(model, rope_scaling={"rope_type": "llama3"})


def shard(model: Path, file_name: str) -> None:
    """Turn model.safetensors into an index naming `file_name` for every tensor."""
    names = list(load_file(model / "model.safetensors"))
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: file_name for n in names}}))


def shard_out_of_dir(model: Path) -> None:
    other = model.parent / (model.name + "-other")
    other.mkdir()
    shutil.move(model / "model.safetensors", other / "model.safetensors")  # weights that would load
    names = list(load_file(other / "model.safetensors"))
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: f"../{other.name}/model.safetensors" for n in names}}))


def shard_absolute(model: Path) -> None:
    names = list(load_file(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "/etc/passwd" for n in names}}))


def shard_symlink_out(model: Path) -> None:
    shard(model, "shard-1.safetensors")
    outside = model.parent / (model.name + "-outside.safetensors")
    shutil.move(model / "model.safetensors", outside)
    (model / "shard-1.safetensors").symlink_to(outside)


def deep_index(model: Path) -> None:
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")


def rewrite_header(model: Path, change: Callable[[dict, int], tuple[dict, int | None]]) -> None:
    """model.safetensors with its JSON header changed by `change(header, data_bytes)`, which may
    also return a header length to write in place of the true one."""
    path = model / "model.safetensors"
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    header, claimed = change(header, len(data))
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", claimed if claimed is not None else len(text)) + text + data)


def first_tensor(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


def header_shape_lie(header: dict, _):
    first_tensor(header)["shape"] = [1 << 30, 1 << 30]
    return header, None


def header_offsets_beyond(header: dict, data_bytes: int):
    entry = first_tensor(header)
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [data_bytes * 4, data_bytes * 4 + size]
    return header, None


def header_overlap(header: dict, _):
    tensors = [v for k, v in header.items() if k != "__metadata__"]
    a, b = sorted(tensors, key=lambda t: t["data_offsets"][0])[:2]
    b_size = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b_size]
    return header, None


def header_dtype(header: dict, _):
    first_tensor(header)["dtype"] = "F99"
    return header, None


def header_huge_length(header: dict, _):
    return header, 1 << 60


def header_deep(model: Path) -> None:
    path = model / "model.safetensors"
    text = ("[" * 100_000 + "]" * 100_000).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)


def replace_tensor(model: Path, change: Callable[[dict], None]) -> None:
    tensors = load_file(model / "model.safetensors")
    change(tensors)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})


def wrong_shape(tensors: dict) -> None:
    name = next(n for n in tensors if n.endswith("mlp.c_fc.weight"))
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)


def nan_weights(tensors: dict) -> None:
    name = next(n for n in tensors if n.endswith("attn.c_attn.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))


def int_weights(tensors: dict) -> None:
    name = next(n for n in tensors if n.endswith("mlp.c_fc.weight"))
    tensors[name] = tensors[name].to(torch.int32)


def huge_vocab_tokenizer(model: Path) -> None:
    spec = json.loads((model / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for i in range(20_000):
        vocab[f"tok{i}"] = len(vocab)
    (model / "tokenizer.json").write_text(json.dumps(spec))


def pad_tokenizer(model: Path) -> None:
    """Valid JSON, 5 MB of it, for a 1,024-token vocabulary (parsing takes ~20 times a file's size)."""
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[:-1] + " " * (5 << 20) + "}")


def oversized_tokenizer(model: Path) -> None:
    with open(model / "tokenizer.json", "r+b") as f:
        f.truncate(65 << 20)  # sparse: costs no disk


def drop_int8_scales(tensors: dict) -> None:
    for name in [n for n in tensors if n.endswith(".scale")]:
        del tensors[name]


def wrong_int8_scale(tensors: dict) -> None:
    name = next(n for n in tensors if n.endswith(".scale"))
    tensors[name] = torch.ones(3)


def edit_legacy_model(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config["model"].update(changes)
    (model / "config.json").write_text(json.dumps(config))


def legacy_pat_str_number(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["tokenizer"]["pat_str"] = 5
    (model / "config.json").write_text(json.dumps(config))


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (model / name).write_bytes(data)
    return apply


def symlink(name: str, target: str) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        (model / name).unlink()
        (model / name).symlink_to(target)
    return apply


# (case id, base model, change, what the one line must name)
CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("n_layer-1000000", "gpt2", lambda m: edit_config(m, n_layer=1_000_000), "config.json"),
    ("n_layer-beyond-the-weights", "gpt2", lambda m: edit_config(m, n_layer=4000), "config.json"),
    ("n_embd-far-beyond-the-weights", "gpt2", lambda m: edit_config(m, n_embd=1 << 16, n_head=4), "model.safetensors"),
    ("n_positions-beyond-the-weights", "gpt2", lambda m: edit_config(m, n_positions=1_000_000), "model.safetensors"),
    ("vocab-beyond-the-weights", "gpt2", lambda m: edit_config(m, vocab_size=10_000_000), "model.safetensors"),
    ("negative-n_inner", "gpt2", lambda m: edit_config(m, n_inner=-5), "config.json"),
    ("negative-intermediate_size", "llama", lambda m: edit_config(m, intermediate_size=-5), "config.json"),
    ("negative-head_dim", "llama", lambda m: edit_config(m, head_dim=-8), "config.json"),
    ("n_embd-true", "gpt2", lambda m: edit_config(m, n_embd=True), "config.json"),
    ("n_layer-huge-integer", "gpt2", lambda m: config_text(m, "n_layer", "9" * 5000), "config.json"),
    ("layer_norm_epsilon-word", "gpt2", lambda m: edit_config(m, layer_norm_epsilon="x"), "config.json"),
    ("layer_norm_epsilon-Infinity", "gpt2", lambda m: config_text(m, "layer_norm_epsilon", "Infinity"), "config.json"),
    ("layer_norm_epsilon-1e400", "gpt2", lambda m: config_text(m, "layer_norm_epsilon", "1e400"), "config.json"),
    ("rms_norm_eps-NaN", "llama", lambda m: config_text(m, "rms_norm_eps", "NaN"), "config.json"),
    ("rope_theta-negative", "llama", lambda m: edit_config(m, rope_theta=-1), "config.json"),
    ("rope_scaling-without-keys", "llama", drop_rope_keys, "config.json"),
    ("rope_scaling-a-list", "llama", lambda m: edit_config(m, rope_scaling=[1, 2]), "config.json"),
    ("sliding_window-word", "llama", lambda m: edit_config(m, sliding_window="x"), "config.json"),
    ("unknown-architecture", "gpt2", lambda m: edit_config(m, architectures=["FooForCausalLM"]), "FooForCausalLM"),
    ("eos_token_id-beyond-vocab", "gpt2", lambda m: edit_config(m, eos_token_id=10**12), "config.json"),
    ("code_assistant-a-string", "gpt2", lambda m: edit_config(m, code_assistant="x"), "config.json"),
    ("config-nested-100000", "gpt2", lambda m: config_text(m, "extra", "[" * 100_000 + "]" * 100_000), "config.json"),
    ("config-oversized", "gpt2", write("config.json", "{" + " " * (5 << 20) + "}"), "config.json"),
    ("config-binary", "gpt2", write("config.json", b"\xff\xfe\x00garbage"), "config.json"),
    ("config-symlink-to-dev-zero", "gpt2", symlink("config.json", "/dev/zero"), "config.json"),
    ("index-nested-100000", "gpt2", deep_index, "model.safetensors.index.json"),
    ("shard-path-dot-dot", "gpt2", shard_out_of_dir, "model.safetensors.index.json"),
    ("shard-path-etc-passwd", "gpt2", shard_absolute, "model.safetensors.index.json"),
    ("shard-symlink-out", "gpt2", shard_symlink_out, "shard-1.safetensors"),
    ("index-weight_map-a-list", "gpt2", lambda m: (m / "model.safetensors").unlink() or write(
        "model.safetensors.index.json", '{"weight_map": []}')(m), "model.safetensors.index.json"),
    ("header-shape-lie", "gpt2", lambda m: rewrite_header(m, header_shape_lie), "model.safetensors"),
    ("header-offsets-beyond-file", "gpt2", lambda m: rewrite_header(m, header_offsets_beyond), "model.safetensors"),
    ("header-overlapping-tensors", "gpt2", lambda m: rewrite_header(m, header_overlap), "model.safetensors"),
    ("header-unknown-dtype", "gpt2", lambda m: rewrite_header(m, header_dtype), "model.safetensors"),
    ("header-length-2**60", "gpt2", lambda m: rewrite_header(m, header_huge_length), "model.safetensors"),
    ("header-nested-100000", "gpt2", header_deep, "model.safetensors"),
    ("weights-empty-file", "gpt2", write("model.safetensors", b""), "model.safetensors"),
    ("weight-of-the-wrong-shape", "gpt2", lambda m: replace_tensor(m, wrong_shape), "model.safetensors"),
    ("weight-of-int32", "gpt2", lambda m: replace_tensor(m, int_weights), "model.safetensors"),
    ("weights-NaN", "gpt2", lambda m: replace_tensor(m, nan_weights), "model.safetensors"),
    ("tokenizer-junk-bytes", "gpt2", write("tokenizer.json", os.urandom(4096)), "tokenizer.json"),
    ("tokenizer-nested-100000", "gpt2", write("tokenizer.json", "[" * 100_000 + "]" * 100_000), "tokenizer.json"),
    ("tokenizer-wrong-model", "gpt2", write("tokenizer.json", '{"model": {"type": "WordLevel"}}'), "tokenizer.json"),
    ("tokenizer-huge-vocab", "gpt2", huge_vocab_tokenizer, "tokenizer.json"),
    ("tokenizer-far-beyond-its-vocab", "gpt2", pad_tokenizer, "tokenizer.json"),
    ("tokenizer-oversized", "gpt2", oversized_tokenizer, "tokenizer.json"),
    ("tokenizer-symlink-to-etc-passwd", "gpt2", symlink("tokenizer.json", "/etc/passwd"), "tokenizer.json"),
    ("tokenizer_config-broken", "gpt2", write("tokenizer_config.json", "{not json"), "tokenizer_config.json"),
    ("tokenizer_config-nested-100000", "gpt2", write("tokenizer_config.json", "[" * 100_000 + "]" * 100_000),
     "tokenizer_config.json"),
    ("legacy-n_layer-1000000", "legacy", lambda m: edit_legacy_model(m, n_layer=1_000_000), "config.json"),
    ("legacy-unknown-field", "legacy", lambda m: edit_legacy_model(m, layers=3), "config.json"),
    ("legacy-ranks-junk", "legacy", write("tokenizer.tiktoken", "not base64 at all\n"), "tokenizer.tiktoken"),
    ("legacy-pat_str-a-number", "legacy", legacy_pat_str_number, "config.json"),
    ("int8-without-scales", "int8", lambda m: replace_tensor(m, drop_int8_scales), "model.safetensors"),
    ("int8-scale-of-the-wrong-shape", "int8", lambda m: replace_tensor(m, wrong_int8_scale), "model.safetensors"),
]


INT8_BASES = ("int8", "legacy")  # the shipped model (the first format) is int8 too


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, code_bpe) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-bases")
    gpt2 = make_model_dir(root / "gpt2", ranks=code_bpe)
    llama = make_model_dir(root / "llama", ranks=code_bpe, **ARCHITECTURES["llama"], arch="llama")
    return {"gpt2": gpt2, "llama": llama, "int8": write_int8_model_dir(gpt2, root / "int8"),
            "legacy": REPO / "models" / "default"}  # this project's first format


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_a_hostile_model_dir_is_one_line_and_exit_2_within_bounds(base_dirs, tmp_path, case):
    name, base, change, fragment = CASES[case]
    model = tmp_path / "models" / name
    model.parent.mkdir()
    shutil.copytree(base_dirs[base], model)
    change(model)
    command = COMMANDS[case % len(COMMANDS)]
    if command == "quantize" and base in INT8_BASES:  # refused as "already int8" before the files are read
        command = "lsp"
    code, stderr, seconds, peak_mb = run_bounded(command_line(command, model, tmp_path))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, (command, code, stderr[-3000:])
    assert fragment in lines[0], (command, lines[0])
    assert peak_mb < PEAK_RSS_LIMIT_MB, (command, peak_mb)
    print(f"{name:34} {command:13} {seconds:5.1f} s {peak_mb:5.0f} MB  {lines[0]}")


def test_the_unbroken_bases_load(base_dirs, tmp_path):
    """The cases fail for what was changed, not because the bases were broken to begin with."""
    for base, model in base_dirs.items():
        code, stderr, _, _ = run_bounded(["eval", "--model", model, "--src", STDLIB / "json", "--max-windows", "2"])
        assert code == 0, (base, stderr[-2000:])
