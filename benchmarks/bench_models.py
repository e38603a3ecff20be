"""The models `code-assistant bench engine` runs, and their copies in each engine's own format.

Every engine gets the same float weights: a Hugging Face directory (the shipped model exported
with our own writer, or a random model of a named shape), converted once per machine into
CTranslate2's int8 directory (its transformers converter) and llama.cpp's GGUF: q8_0 straight from
convert_hf_to_gguf.py, Q4_K_M by llama-quantize from the converter's bf16 file (the converter and
the binary from scripts/build-llama-cpp.sh's folder, else the converter from the llama-cpp-python
source distribution, fetched with pip). Artifacts are cached under the work directory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

from engine.model_dir import default_model_dir, load_model_dir, read_model_dir, save_model_dir
from engine.tokenizer import hf_tokenizer_files, read_ranks

from .hf_models import FAMILIES, QWEN_0_5B, save_random_model

# Named models: the shipped one, and Qwen2.5-Coder-0.5B's shape with random weights (no hub here),
# its 32,768 positions included (the paged pool holds what the streams use, not every context).
SHAPES = {"qwen2-0.5b": (FAMILIES["qwen2"], QWEN_0_5B, 151936)}

# scripts/build-llama-cpp.sh's output: src/ (the converter), bin/llama-quantize, bin/llama-server.
LLAMA_CPP_HOME = Path(os.environ.get("LLAMA_CPP_HOME") or Path(os.environ.get("CODE_ASSISTANT_CACHE")
                      or Path.home() / ".cache" / "code-assistant") / "llama.cpp-0.3.36")


def hf_dir(name_or_path: str, work: Path) -> Path:
    """A Hugging Face directory for `default`, a SHAPES name or a model directory."""
    if name_or_path in SHAPES:
        out = work / name_or_path / "hf"
        family, shape, vocab = SHAPES[name_or_path]
        config = out / "config.json"
        if not config.is_file() or json.loads(config.read_text()).get("max_position_embeddings") != shape["positions"]:
            shutil.rmtree(out.parent, ignore_errors=True)  # an older shape and its converted copies
            print(f"building a random {name_or_path} model in {out} (a few minutes)", file=sys.stderr, flush=True)
            # the tokenizer as large as stdlib text makes it; the embedding and head at full size
            save_random_model(out, family, shape, vocab_size=16384, model_vocab=vocab, dtype=torch.bfloat16)
        return out
    path = default_model_dir() if name_or_path == "default" else Path(name_or_path)
    info = read_model_dir(path)
    if not info.legacy:
        return info.path  # a hub name or GGUF file resolved to its directory
    # Our first format (tiktoken ranks, int8 weights): export what `train` writes now.
    out = work / (path.name if name_or_path != "default" else "default") / "hf"
    if not (out / "config.json").is_file():
        model, tokenizer, info = load_model_dir(path)
        tok = info.raw["tokenizer"]
        ranks = read_ranks(path / tok["file"])
        eot = tok["special_tokens"]["<|endoftext|>"]
        save_model_dir(out, model, hf_tokenizer_files(ranks, tok["pat_str"], model.config.block_size), eot, eot,
                       {"exported_from": str(path)})
    return out


def ctranslate2_dir(hf: Path, work: Path) -> Path:
    out = work / hf.parent.name / "ctranslate2-int8"
    if not (out / "model.bin").is_file():
        import ctranslate2.converters

        print(f"converting {hf} for CTranslate2 (int8)", file=sys.stderr, flush=True)
        ctranslate2.converters.TransformersConverter(str(hf), load_as_float16=False).convert(
            str(out), quantization="int8", force=True)
        config = json.loads((out / "config.json").read_text())
        for key in ("bos_token", "unk_token"):  # its runtime needs strings; our tokenizers have no BOS/UNK
            config[key] = config[key] or config["eos_token"]
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def llama_cpp_source(work: Path) -> Path:
    """llama.cpp's Python converter: $LLAMA_CPP_CONVERT_DIR, else LLAMA_CPP_HOME/src, else the source
    distribution of the installed llama-cpp-python (downloaded once with pip and unpacked under `work`)."""
    given = os.environ.get("LLAMA_CPP_CONVERT_DIR")
    if given:
        return Path(given)
    if (LLAMA_CPP_HOME / "src" / "convert_hf_to_gguf.py").is_file():
        return LLAMA_CPP_HOME / "src"
    import llama_cpp

    version = llama_cpp.__version__
    out = work / f"llama-cpp-python-{version}-src"
    script = out / "convert_hf_to_gguf.py"
    if not script.is_file():
        print(f"fetching llama-cpp-python {version}'s source for its GGUF converter", file=sys.stderr, flush=True)
        dl = work / "sdist"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(dl)], check=True)
        archive = next(dl.glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{archive.name[:-len('.tar.gz')]}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile() and (
                m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith((prefix + "conversion/", prefix + "gguf-py/")))]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(out, members=members, filter="data")
    return out


# The converter names a tokenizer's pre-tokenizer by hashing how it splits a test text, and refuses
# one it does not know (ours are trained here). The benchmark feeds token ids, so any name it
# accepts will do.
CONVERT = """
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def gguf_file(hf: Path, work: Path, src: Path | None = None, quant: str = "q8_0") -> Path:
    """`hf` as GGUF, made once: q8_0 by the converter in `src` (a llama.cpp tree; default
    `llama_cpp_source`), q4_k_m by LLAMA_CPP_HOME's llama-quantize from the converter's bf16 file
    (lossless for bf16 weights; removed once quantised)."""
    if quant not in ("q8_0", "q4_k_m"):
        raise ValueError(f"no GGUF type {quant!r} here (q8_0, q4_k_m)")
    # hf_dir's exports are <work>/<model>/hf; a model directory given as it is names itself
    out = work / (hf.parent.name if hf.name == "hf" else hf.name) / f"model-{quant}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = src or llama_cpp_source(work)
    quantize = LLAMA_CPP_HOME / "bin" / "llama-quantize"
    if quant != "q8_0" and not quantize.is_file():
        raise FileNotFoundError(f"no {quantize}: run scripts/build-llama-cpp.sh")
    converted = out.with_suffix(".tmp") if quant == "q8_0" else out.with_name("model-bf16.gguf.tmp")
    print(f"converting {hf} to GGUF {quant}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", CONVERT, str(src), str(hf), "--outtype", "q8_0" if quant == "q8_0" else "bf16",
                    "--outfile", str(converted)], check=True)
    if quant != "q8_0":
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(quantize), str(converted), str(tmp), quant.upper(), str(os.cpu_count() or 1)], check=True,
                       stdout=subprocess.DEVNULL)
        converted.unlink()
        converted = tmp
    converted.rename(out)
    return out


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of a GGUF's tensors one decode step reads: all of them, but the token embedding only
    where it is also the head (no output.weight), since otherwise its rows are looked up."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    return sum(n for name, n in tensors.items() if name != "token_embd.weight" or "output.weight" not in tensors)


def describe(hf: Path) -> dict:
    raw = json.loads((hf / "config.json").read_text())
    return {k: raw.get(k) for k in ("model_type", "num_hidden_layers", "n_layer", "hidden_size", "n_embd",
                                    "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")
            if raw.get(k) is not None}
