"""Checks on what a model directory holds, run before anything the files describe is allocated.

A model directory comes from anyone (a download, a colleague's tarball), so every value in it is
checked for type, range and consistency before it sizes a tensor or a loop:
- JSON files are bounded in size and nesting depth and may not hold NaN or Infinity;
- every file read (weights, shards, tokenizer, configs) lies inside the directory: no absolute
  or `..` shard paths, no symlinks out (but for a Hugging Face hub cache snapshot, whose files
  are links into the same repository's `blobs/`);
- safetensors headers are read on their own (bounded) and checked: known dtypes, shapes whose
  bytes match their offsets, offsets inside the file and not overlapping;
- `validate_config` checks a ModelConfig's values (types, ranges, rope scaling keys);
- `check_tensor_shapes` checks that config against the tensors the headers describe, so a layer
  count or width beyond what the files hold fails before a model of that size is built.

Each check raises ModelDirError naming the file at fault in one line.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # no torch here: the tokenizer loader reads its files through this module too
    from .model import ModelConfig


class ModelDirError(ValueError):
    """A model directory that cannot be used; the message names the problem in one line."""


# Sizes real files stay far below (a 7 B model's config.json is ~1 KB, its shard index ~25 KB,
# a 256 k-token tokenizer.json ~35 MB, a safetensors header ~40 KB per shard): beyond them a file
# is refused before it is read, so parsing it cannot take the memory the product runs in.
MAX_CONFIG_BYTES = 4 << 20
MAX_TOKENIZER_BYTES = 64 << 20
MAX_HEADER_BYTES = 16 << 20
# transformers' own config.json and tokenizer.json nest under 10 levels.
MAX_JSON_DEPTH = 64

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16", "F64"})


# ---- files --------------------------------------------------------------------------------------
def inside(model_dir: Path, path: Path) -> Path:
    """`path` with its links followed, if it stays in the model directory (or, for a hub cache
    snapshot `.../snapshots/REV/`, in that repository's `blobs/`); ModelDirError otherwise."""
    root = model_dir.resolve()
    target = path.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    if not any(target == a or a in target.parents for a in allowed):
        raise ModelDirError(f"{path} leads outside the model directory {model_dir} (to {target})")
    return target


def shard_path(model_dir: Path, index: Path, name: object) -> Path:
    """A file named in a shard index: a plain relative name that stays in the directory."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ModelDirError(f"{index}: weight_map holds {name!r}, not a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelDirError(f"{index}: weight_map names {name!r}, outside the model directory")
    path = model_dir / relative
    inside(model_dir, path)
    return path


def read_bytes(path: Path, limit: int, model_dir: Path | None = None) -> bytes:
    """A regular file's bytes, at most `limit` of them (else ModelDirError); read through at most
    `limit + 1` bytes so a file that grows or lies about its size still cannot exhaust memory."""
    if model_dir is not None:
        inside(model_dir, path)
    if not path.is_file():
        raise ModelDirError(f"{path} is missing or not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ModelDirError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > limit:
        raise ModelDirError(f"{path} is over {limit >> 20} MB; refusing to parse it")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(path: Path, data: bytes, max_depth: int | None = MAX_JSON_DEPTH) -> object:
    """JSON text with its nesting bounded and NaN/Infinity refused; ModelDirError naming `path`.
    `max_depth=None` leaves only the parser's recursion limit (a walk of a 200 k-token
    tokenizer.json takes seconds on a busy machine; the tokenizers library bounds its own)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelDirError(f"{path} is not UTF-8 text: {e}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # json's C parser stops at the interpreter's recursion limit
        raise ModelDirError(f"{path} nests too deeply; at most {MAX_JSON_DEPTH} levels are allowed") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise ModelDirError(f"{path} is not valid JSON: {e}") from None
    if max_depth is not None and json_depth(value, max_depth) > max_depth:
        raise ModelDirError(f"{path} nests too deeply; at most {max_depth} levels are allowed")
    return value


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES, model_dir: Path | None = None,
              max_depth: int | None = MAX_JSON_DEPTH) -> object:
    return parse_json(path, read_bytes(path, limit, model_dir), max_depth)


def read_json_object(path: Path, limit: int = MAX_CONFIG_BYTES, model_dir: Path | None = None) -> dict:
    data = read_json(path, limit, model_dir)
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def json_depth(value: object, stop_at: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of arrays and objects in parsed JSON (walked without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if deepest > stop_at:
            break
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


# ---- safetensors headers ------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: Path


def read_safetensors_header(path: Path, model_dir: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, each checked against the file's real size."""
    inside(model_dir, path)
    if not path.is_file():
        raise ModelDirError(f"{model_dir}: weights file {path.name} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelDirError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelDirError(f"{path}: header length {n} is beyond the file ({size} bytes) or the "
                                    f"{MAX_HEADER_BYTES >> 20} MB limit")
            raw = f.read(n)
    except OSError as e:
        raise ModelDirError(f"cannot read {path}: {e.strerror or e}") from e
    header = parse_json(path, raw)
    if not isinstance(header, dict):
        raise ModelDirError(f"{path}: the safetensors header is not a JSON object")
    data_bytes = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ModelDirError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise ModelDirError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and 0 <= d < 1 << 40 for d in shape):
            raise ModelDirError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ModelDirError(f"{path}: tensor {name!r} has data offsets {offsets!r} outside the file's "
                                f"{data_bytes} bytes of data")
        if math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise ModelDirError(f"{path}: tensor {name!r} of shape {shape} {dtype} does not fill its "
                                f"{offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = TensorInfo(dtype, tuple(shape), path)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ModelDirError(f"{path}: tensors {first!r} and {second!r} overlap")
    return tensors


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_checkpoint_headers(files: Iterable[Path], model_dir: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for path in dict.fromkeys(files):
        tensors.update(read_safetensors_header(path, model_dir))
    return tensors


# ---- the config ---------------------------------------------------------------------------------
# Far beyond any released model (the widest have n_embd ~ 25 k, 160 layers, 256 k tokens, 10 M
# positions); a value past them is a broken or hostile file, refused before the tensor check.
INT_RANGES = {"vocab_size": (1, 1 << 24), "block_size": (1, 1 << 27), "n_layer": (1, 4096), "n_head": (1, 4096),
              "n_embd": (1, 1 << 20), "n_kv_head": (1, 4096), "head_dim": (1, 1 << 16),
              "intermediate_size": (1, 1 << 22), "sliding_window": (0, 1 << 27)}
BOOL_FIELDS = ("qkv_bias", "out_bias", "mlp_bias", "tie_embeddings")
ROPE_NEEDS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor"), "yarn": ("factor",)}
ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                "attention_factor", "mscale", "mscale_all_dim", "beta_fast", "beta_slow")


def validate_config(config: ModelConfig, source: Path | str) -> None:
    """Each value's type and range; `source` (the file it came from) is named in the error."""
    def fail(message: str) -> None:
        raise ModelDirError(f"{source}: {message}")

    for name, (low, high) in INT_RANGES.items():
        value = getattr(config, name)
        if not _is_int(value) or not low <= value <= high:
            fail(f"{name} must be an integer from {low} to {high}, got {value!r}")
    if config.n_head % config.n_kv_head:
        fail(f"n_head ({config.n_head}) must be a multiple of n_kv_head ({config.n_kv_head})")
    for name in BOOL_FIELDS:
        if not isinstance(getattr(config, name), bool):
            fail(f"{name} must be true or false, got {getattr(config, name)!r}")
    if not _finite(config.norm_eps) or not 0 < config.norm_eps < 1:
        fail(f"the norm epsilon must be a finite number in (0, 1), got {config.norm_eps!r}")
    if not _finite(config.rope_theta) or config.rope_theta <= 1:
        fail(f"rope_theta must be a finite number above 1, got {config.rope_theta!r}")
    if not _finite(config.dropout) or not 0 <= config.dropout < 1:
        fail(f"dropout must be in [0, 1), got {config.dropout!r}")
    scaling = config.rope_scaling
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        fail(f"rope_scaling must be an object, got {scaling!r}")
    rope_type = scaling.get("rope_type", "default")
    missing = [k for k in ROPE_NEEDS.get(rope_type, ()) if k not in scaling]
    if missing:
        fail(f"rope_scaling of type {rope_type!r} lacks {', '.join(missing)}")
    for key in ROPE_NUMBERS:
        if key in scaling and scaling[key] is not None and (not _finite(scaling[key]) or scaling[key] <= 0):
            fail(f"rope_scaling.{key} must be a finite positive number, got {scaling[key]!r}")
    if "factor" in scaling and scaling["factor"] < 1 and rope_type != "linear":
        fail(f"rope_scaling.factor must be at least 1, got {scaling['factor']!r}")
    if rope_type == "llama3" and scaling["low_freq_factor"] == scaling["high_freq_factor"]:
        fail("rope_scaling's low_freq_factor and high_freq_factor must differ")
    if "truncate" in scaling and not isinstance(scaling["truncate"], bool):
        fail(f"rope_scaling.truncate must be true or false, got {scaling['truncate']!r}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- the config against the tensors -------------------------------------------------------------
# Every family stores at least this many tensors per layer (two norms, attention in and out, MLP
# in and out): a config with more layers than the files could hold fails before its rules are made.
MIN_TENSORS_PER_LAYER = 6


def check_layer_count(config: ModelConfig, tensors: dict[str, TensorInfo], source: Path) -> None:
    if config.n_layer * MIN_TENSORS_PER_LAYER > len(tensors):
        raise ModelDirError(f"{source}: n_layer {config.n_layer} needs at least "
                            f"{config.n_layer * MIN_TENSORS_PER_LAYER} tensors; the weights hold {len(tensors)}")


def check_tensor_shapes(expected: dict[str, tuple[int, ...]], rules, tensors: dict[str, TensorInfo],
                        source: Path) -> None:
    """Float checkpoints: each of our tensors (`expected`: name -> shape) against the stored ones
    it is made of (`rules`: families.Rule), by shape alone, before any data is read."""
    for rule in rules:
        want = expected.get(rule.ours)
        parts = []
        for name in rule.theirs:
            info = tensors.get(name)
            if info is None:
                raise ModelDirError(f"{source}: the weights have no tensor {name!r}")
            if info.dtype not in FLOAT_DTYPES:
                raise ModelDirError(f"{info.file}: tensor {name!r} is {info.dtype}, not a float type")
            parts.append(info.shape)
        if want is None:
            continue
        if rule.kind == "transpose":
            got = tuple(reversed(parts[0]))
        elif rule.kind == "cat":
            if any(p[1:] != parts[0][1:] or not p for p in parts):
                raise ModelDirError(f"{source}: tensors {', '.join(rule.theirs)} have shapes {parts} that do not stack")
            got = (sum(p[0] for p in parts), *parts[0][1:])
        else:
            got = parts[0]
        if got != want:
            raise ModelDirError(f"{tensors[rule.theirs[0]].file}: tensor {rule.theirs[0]} has shape {parts[0]}, "
                                f"config.json implies {want if len(parts) == 1 else 'a part of ' + str(want)}")


def check_int4_shapes(expected: dict[str, tuple[int, ...]], tensors: dict[str, TensorInfo], source: Path,
                      scale_suffix: str, group: int, pad: int, kept_int8: tuple[str, ...]) -> None:
    """int4 checkpoints (engine/quantize.py's layout): each 2-D weight but those `kept_int8` packed two
    a byte, uint8 (out, padded_in / 2) with inputs padded to a multiple of `pad`, and a float scale per
    `group` inputs; the `kept_int8` ones (embeddings) int8 as check_int8_shapes says."""
    packed = {n: (s[0], (s[1] + -s[1] % pad) // 2) for n, s in expected.items() if len(s) == 2 and n not in kept_int8}
    for name, want in packed.items():
        info, scale = tensors.get(name), tensors.get(name + scale_suffix)
        if info is None or info.shape != want or info.dtype != "U8":
            found = "nothing" if info is None else f"{info.dtype} {info.shape}"
            raise ModelDirError(f"{source}: int4 tensor {name} should be U8 {want}, found {found}")
        want_scale = (want[0], 2 * want[1] // group)
        if scale is None or scale.shape != want_scale or scale.dtype not in FLOAT_DTYPES:
            found = "nothing" if scale is None else f"{scale.dtype} {scale.shape}"
            raise ModelDirError(f"{source}: {name + scale_suffix} should be a float {want_scale}, found {found}")
    check_int8_shapes({n: s for n, s in expected.items() if n not in packed}, {}, tensors, source, scale_suffix)


def check_int8_shapes(expected: dict[str, tuple[int, ...]], stored_name: dict[str, str],
                      tensors: dict[str, TensorInfo], source: Path, scale_suffix: str) -> None:
    """int8 checkpoints (our names): each weight's shape, and an int8 weight has its per-row scale."""
    for ours, want in expected.items():
        name = stored_name.get(ours, ours)
        info = tensors.get(name)
        if info is None:
            raise ModelDirError(f"{source}: the weights have no tensor {name!r}")
        if info.shape != want:
            raise ModelDirError(f"{info.file}: tensor {name} has shape {info.shape}, config.json implies {want}")
        scale = tensors.get(name + scale_suffix)
        if info.dtype == "I8":
            if scale is None:
                raise ModelDirError(f"{info.file}: int8 tensor {name} has no {name + scale_suffix}")
            if scale.shape != want[:1] or scale.dtype not in FLOAT_DTYPES:
                raise ModelDirError(f"{scale.file}: {name + scale_suffix} is {scale.dtype} {scale.shape}, "
                                    f"expected a float vector of {want[0]}")
        elif info.dtype not in FLOAT_DTYPES:
            raise ModelDirError(f"{info.file}: tensor {name!r} is {info.dtype}, not int8 or a float type")
        elif scale is not None:
            raise ModelDirError(f"{info.file}: tensor {name} has a scale but is not int8")
