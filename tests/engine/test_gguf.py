"""`--model FILE.gguf` and Ollama names: GGUF files written by llama.cpp's own converter
(convert_hf_to_gguf.py) and quantiser (llama-quantize) from tiny models made here, and from the
shipped model exported; the oracles are transformers (the logits of the model the file was made
from) and llama.cpp itself (llama-server on the same file: its tokenizer, its greedy text and its
probabilities). llama.cpp comes from `bash scripts/build-llama-cpp.sh`; without it these tests skip
and say so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the oracle (pip install -e '.[dev]')")
gguf = pytest.importorskip("gguf", reason="the gguf package reads GGUF files (a runtime dependency)")

from benchmarks.hf_models import FAMILIES, STDLIB, Family, save_random_model, stdlib_text  # noqa: E402
from engine import CompletionInput, Engine, EngineConfig, SamplingParams  # noqa: E402
from engine.gguf import GGUFFile  # noqa: E402
from engine.model_dir import load_model_dir, load_tokenizer_from_dir  # noqa: E402

from .conftest import PLAIN  # noqa: E402
from .test_hub import cli  # noqa: E402

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_HOME") or Path(os.environ.get("CODE_ASSISTANT_CACHE")
                 or Path.home() / ".cache" / "code-assistant") / "llama.cpp-0.3.36")
CONVERTER = LLAMA_CPP / "src" / "convert_hf_to_gguf.py"
BUILD = "bash scripts/build-llama-cpp.sh"
# The converter names a byte-level tokenizer's pre-tokenizer by hashing how it splits a test text and
# refuses the ones trained here; we name it (the same shim as benchmarks/bench_models.py).
CONVERT = """
import os, runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ["GGUF_PRE"]
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""
# Our family name -> the pre-tokenizer the GGUF says (for byte-level BPE vocabularies).
PRE = {"qwen2": "qwen2", "starcoder2": "starcoder", "gpt2": "gpt-2", "santacoder": "gpt-2", "llama": "default"}
CODE = (STDLIB / "json" / "decoder.py").read_text()


def needs_converter():
    if not CONVERTER.is_file():
        pytest.skip(f"llama.cpp's converter is not at {CONVERTER}: run `{BUILD}`")


def needs_binaries():
    if not (LLAMA_CPP / "bin" / "llama-server").is_file():
        pytest.skip(f"llama.cpp is not built at {LLAMA_CPP}: run `{BUILD}`")


def convert(hf: Path, out: Path, outtype: str, pre: str) -> Path:
    needs_converter()
    done = subprocess.run([sys.executable, "-c", CONVERT, str(LLAMA_CPP / "src"), str(hf), "--outtype", outtype,
                           "--outfile", str(out)], capture_output=True, text=True, env={**os.environ, "GGUF_PRE": pre})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def quantize(source: Path, out: Path, kind: str) -> Path:
    needs_binaries()
    done = subprocess.run([str(LLAMA_CPP / "bin" / "llama-quantize"), str(source), str(out), kind],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def tensor_types(path: Path) -> set[str]:
    return {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(path).tensors}


# ---- tiny models of each family -----------------------------------------------------------------
def sentencepiece_llama(out: Path, shape: dict) -> Path:
    """A Llama with a real SentencePiece model (tokenizer.model, BPE with byte fallback), which the
    converter writes as GGUF's `llama` tokenizer with its scores."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece trains the Llama test tokenizer")
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(line for text in stdlib_text() for line in text.splitlines()
                                                          if line.strip()),
                                   model_prefix=str(out / "tokenizer"), vocab_size=700, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, minloglevel=2,
                                   allow_whitespace_only_pieces=True, split_digits=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity")
    config = transformers.LlamaConfig(vocab_size=700, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                                      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                                      intermediate_size=shape["intermediate"],
                                      max_position_embeddings=shape["positions"], bos_token_id=1, eos_token_id=2,
                                      initializer_range=0.1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(out)
    return out


def tiny_gguf(work: Path, family: str, outtype: str) -> Path:
    """The tiny `family` model (work/FAMILY-hf) as a GGUF file of `outtype`, each made once per session."""
    hf = work / f"{family}-hf"
    if not hf.is_dir():
        tiny_hf(family, hf, TINY)
    path = work / f"{family}-{outtype}.gguf"
    return path if path.is_file() else convert(hf, path, outtype, PRE[family])


def tiny_hf(family: str, out: Path, shape: dict) -> Path:
    if family == "llama":
        return sentencepiece_llama(out, shape)
    save_random_model(out, FAMILIES[family], shape, initializer_range=0.1)
    config = json.loads((out / "config.json").read_text())
    if family == "gpt2":  # the converter reads GPT-2's older name for the context
        config["n_ctx"] = config["n_positions"]
    if family == "starcoder2":  # GGUF's starcoder2 carries no sliding window (llama.cpp attends to all)
        config["sliding_window"] = None
    (out / "config.json").write_text(json.dumps(config))
    return out


TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "positions": 256}
# K-quants pack 256 values a block: rows of 256 (llama-quantize falls back to another type otherwise).
QUANTIZABLE = {"layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "intermediate": 512, "positions": 256}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:  # the converted directories
        patch.setenv("CODE_ASSISTANT_GGUF_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield tmp_path_factory.mktemp("gguf")


def transformers_logits(hf: Path, ids: list[int]) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def our_logits(model_path: Path, ids: list[int]) -> torch.Tensor:
    model, _, _ = load_model_dir(model_path)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


# Largest |logit difference| as a fraction of the largest |logit|. The files hold the weights as they
# are (F32) or rounded once (F16: 11 significant bits, BF16: 8, Q8_0: 8 bits a weight with a scale per
# 32); through two layers the logits move by about that relative rounding.
FLOAT_TOLERANCE = {"f32": 1e-5, "f16": 4e-3, "bf16": 3e-2, "q8_0": 6e-2}  # measured: 0, 1.3e-3, 1.1e-2, 3.1e-2


@pytest.mark.parametrize("family, outtype", [(f, "f32") for f in PRE] + [("llama", t) for t in ("f16", "bf16", "q8_0")])
def test_a_converted_file_gives_the_logits_of_its_model(family, outtype, work):
    hf = work / f"{family}-hf"
    if not hf.is_dir():
        tiny_hf(family, hf, TINY)
    path = convert(hf, work / f"{family}-{outtype}.gguf", outtype, PRE[family])
    ids = list(range(3, 120))
    expected = transformers_logits(hf, ids)
    diff = (our_logits(path, ids) - expected).abs().max().item() / expected.abs().max().item()
    print(f"{family} {outtype} ({', '.join(sorted(tensor_types(path)))}): max |logit difference| / max |logit| "
          f"{diff:.1e}")
    assert diff <= FLOAT_TOLERANCE[outtype]
    tokenizer, tokens = load_tokenizer_from_dir(path), list(GGUFFile(path).get("tokenizer.ggml.tokens"))
    if family != "llama":  # end of text (and FIM, where the family has it) found in the vocabulary by text
        assert tokens[tokenizer.eot_id] == "<|endoftext|>"
    if family not in ("llama", "gpt2"):
        fim = (tokens[tokenizer.fim.prefix], tokens[tokenizer.fim.suffix], tokens[tokenizer.fim.middle])
        assert fim in (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))


def test_a_quantised_file_is_cached_in_float16_and_a_float_one_as_it_is(work):
    """The converted directory keeps F32/F16/BF16 tensors as the file has them and stores quantised
    ones in float16 (half of float32's disk; the logits above are within the same tolerance)."""
    from safetensors import safe_open

    from engine.gguf import gguf_to_model_dir

    hf = work / "llama-hf"
    if not hf.is_dir():
        tiny_hf("llama", hf, TINY)
    sizes = {}
    for outtype in ("f32", "q8_0"):
        path = work / f"llama-{outtype}.gguf"
        if not path.is_file():
            convert(hf, path, outtype, PRE["llama"])
        types = {t.name: gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(path).tensors}
        out = gguf_to_model_dir(path)
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            stored = {f.get_slice(n).get_dtype() for n in f.keys()}
        sizes[outtype] = (out / "model.safetensors").stat().st_size
        assert stored == ({"F32"} if outtype == "f32" else {"F16", "F32"}), (outtype, stored, set(types.values()))
    assert sizes["q8_0"] < 0.6 * sizes["f32"]


# ---- llama.cpp as the oracle --------------------------------------------------------------------
class LlamaServer:
    def __init__(self, model: Path, log: Path):
        needs_binaries()
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([str(LLAMA_CPP / "bin" / "llama-server"), "-m", str(model), "--port", str(self.port),
                                      "--host", "127.0.0.1", "-t", "2", "-c", "256", "-np", "1", "--no-warmup"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not start:\n" + log.read_text(errors="replace")[-3000:])

    def tokenize(self, text: str) -> list[int]:
        return httpx.post(self.url + "/tokenize", json={"content": text}, timeout=30).json()["tokens"]

    def greedy(self, prompt_ids: list[int], n: int) -> list[tuple[int, list[float]]]:
        """Each generated token and llama.cpp's two best probabilities at that step."""
        r = httpx.post(self.url + "/completion", json={
            "prompt": prompt_ids, "n_predict": n, "temperature": 0, "n_probs": 2, "cache_prompt": False},
            timeout=120).json()
        assert "completion_probabilities" in r, r
        steps = []
        for step in r["completion_probabilities"]:
            top = step.get("top_logprobs") or step.get("top_probs")
            probs = [float(torch.tensor(t["logprob"]).exp()) if "logprob" in t else t["prob"] for t in top]
            steps.append((step["id"], probs))
        return steps

    def next_probs(self, prompt_ids: list[int], k: int = 8) -> dict[int, float] | None:
        """llama.cpp's probabilities of its k most likely next tokens; None where its best token is a
        byte of an unfinished UTF-8 character (llama-server reports no probabilities for those)."""
        r = httpx.post(self.url + "/completion", json={"prompt": prompt_ids, "n_predict": 1, "temperature": 0,
                                                       "n_probs": k, "cache_prompt": False}, timeout=60).json()
        if "completion_probabilities" not in r:
            return None
        top = r["completion_probabilities"][0].get("top_logprobs") or r["completion_probabilities"][0]["top_probs"]
        return {t["id"]: (float(torch.tensor(t["logprob"]).exp()) if "logprob" in t else t["prob"]) for t in top}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


TOKENIZER_TEXTS = [CODE[:3000], "def add(a, b):\n    return a + b\n", "  x = '√ünïcödé' + \"\\t\" * 12345\n\n\n", "a  b"]


def test_a_sentencepiece_vocabulary_splits_text_as_sentencepiece_does(work):
    """No llama.cpp needed: the file's pieces and scores against the tokenizer.model they came from."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is the oracle")
    path, hf = tiny_gguf(work, "llama", "f32"), work / "llama-hf"
    reference = spm.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    tokenizer = load_tokenizer_from_dir(path)
    for text in TOKENIZER_TEXTS:
        assert tokenizer.encode(text) == reference.encode(text), text[:40]
    assert tokenizer.bos_ids == [reference.bos_id()] and tokenizer.eot_id == reference.eos_id()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_the_tokenizer_from_the_metadata_splits_text_as_llama_cpp_does(family, work):
    path = tiny_gguf(work, family, "f32")
    server = LlamaServer(path, work / f"{family}-tokenize.log")
    try:
        tokenizer = load_tokenizer_from_dir(path)
        texts = TOKENIZER_TEXTS
        for text in texts:
            ours = tokenizer.encode(text)
            assert ours == server.tokenize(text), text[:40]
            # SentencePiece's "▁" before the first word is a space in the bytes
            assert tokenizer.decode(ours) == (" " + text if family == "llama" else text)
    finally:
        server.stop()
    f = GGUFFile(path)
    eos = f.get("tokenizer.ggml.eos_token_id")
    assert eos in tokenizer.special_ids


def greedy_ours(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens by full recompute (no KV cache): the plainest reading of the model."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids):]


PROMPTS = ["def fibonacci(n):\n    if n <= 1:\n        return n\n    ", "import os\nimport sys\n\n\ndef main(",
           "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
           "for i in range(10):\n    print(", "    def __repr__(self):\n        return "]
# Where llama.cpp's own two best probabilities are closer than this, either token is its greedy
# answer up to its float rounding: the texts may part there (and the comparison stops).
NEAR_TIE = 0.02


@pytest.fixture(scope="module")
def shipped_gguf(work):
    """The shipped model exported to Hugging Face format (what `train` writes) and converted."""
    needs_converter()
    from benchmarks.bench_models import hf_dir

    hf = hf_dir("default", work / "shipped")
    return {t: convert(hf, work / f"shipped-{t}.gguf", t, "gpt-2") for t in ("f16", "q8_0")}


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_greedy_text_of_the_shipped_model_is_llama_cpps(outtype, shipped_gguf, work):
    path = shipped_gguf[outtype]
    model, _, _ = load_model_dir(path)
    engine = Engine.load(path, quantize=None, config=EngineConfig(**PLAIN))
    server = LlamaServer(path, work / f"shipped-{outtype}.log")
    compared = ties = 0
    try:
        for prompt in PROMPTS:
            prompt_ids = engine.tokenizer.encode(prompt)
            theirs = server.greedy(prompt_ids, 32)
            ours = greedy_ours(model, prompt_ids, len(theirs))
            agreed = 0
            for token, probs in theirs:
                if ours[agreed] != token:  # only where llama.cpp itself nearly could not choose
                    assert len(probs) > 1 and probs[0] - probs[1] < NEAR_TIE, (prompt, agreed, probs, ours, theirs)
                    ties += 1
                    break
                agreed += 1
            print(f"{prompt!r}: {agreed} of {len(theirs)} tokens equal")
            compared += agreed
            # The engine's own path (what the server runs: KV cache, decode step) gives that text too.
            text = engine.complete(CompletionInput(prompt, params=SamplingParams(temperature=0, max_tokens=32))).text
            common = engine.tokenizer.decode(ours[:agreed])
            assert text[:len(common)] == common[:len(text)], (prompt, text, common)
    finally:
        server.stop()
        engine.close()
    print(f"shipped {outtype}: {compared} of {32 * len(PROMPTS)} greedy tokens equal to llama.cpp's; "
          f"{ties} prompts part at a near tie")
    assert compared >= 16 * len(PROMPTS)


# Rows of 64 (TINY) do not fit the K-quants' 256: llama-quantize falls back as it does for
# Qwen2.5-0.5B's 896 (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0).
@pytest.mark.parametrize("kind, types, shape", [
    ("F32", {"F32"}, "quantizable"), ("Q4_0", {"Q4_0"}, "quantizable"), ("Q4_1", {"Q4_1"}, "quantizable"),
    ("Q4_K_M", {"Q4_K", "Q6_K"}, "quantizable"), ("Q5_K_M", {"Q5_K", "Q6_K"}, "quantizable"), ("Q6_K", {"Q6_K"}, "quantizable"),
    ("Q8_0", {"Q8_0"}, "quantizable"), ("Q4_K_M", {"Q5_0"}, "narrow"), ("Q5_K_M", {"Q5_1"}, "narrow")])
def test_quantised_files_give_llama_cpps_probabilities(kind, types, shape, work):
    hf = work / f"llama-{shape}-hf"
    if not hf.is_dir():
        sentencepiece_llama(hf, QUANTIZABLE if shape == "quantizable" else TINY)
    f32 = work / f"llama-{shape}-f32.gguf"
    if not f32.is_file():
        convert(hf, f32, "f32", "default")
    path = f32 if kind == "F32" else quantize(f32, work / f"llama-{shape}-{kind}.gguf", kind)
    assert types <= tensor_types(path)
    model, tokenizer, _ = load_model_dir(path)
    server = LlamaServer(path, work / f"llama-{kind}.log")
    worst, compared = 0.0, 0
    try:
        for prompt in [p[:n] for p in PROMPTS for n in (len(p), len(p) // 2)]:
            ids = tokenizer.bos_ids + tokenizer.encode(prompt)
            theirs = server.next_probs(ids)
            if theirs is None:
                continue
            compared += 1
            with torch.no_grad():
                ours = torch.softmax(model(torch.tensor([ids]))[0, -1].float(), -1)
            worst = max(worst, max(abs(ours[i].item() - p) for i, p in theirs.items()))
            best, second = sorted(theirs.values(), reverse=True)[:2]
            if best - second > NEAR_TIE:
                assert int(ours.argmax()) == max(theirs, key=theirs.get), prompt
    finally:
        server.stop()
    print(f"{kind}, {shape} ({', '.join(sorted(tensor_types(path)))}): max |probability difference| vs llama.cpp {worst:.4f} "
          f"({compared} prompts, 8 tokens each)")
    assert compared >= 3
    # llama.cpp multiplies quantised weights by activations it quantises to 8 bits (Q8_K / Q8_0
    # blocks); we multiply the dequantised weights by float activations. Measured on this model (AVX2
    # and AVX-512 kernels may differ a little): F32 0.0003, Q8_0 0.0064, Q4_0 0.0084, Q4_K_M 0.0070,
    # Q5_K_M 0.0144, Q6_K 0.0173.
    assert worst <= 0.03


# ---- what users type ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_gguf_path_and_an_ollama_name_work_through_the_cli(work, tmp_path):
    path = tiny_gguf(work, "qwen2", "q8_0")
    env = {"CODE_ASSISTANT_GGUF_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = cli("quantize", "--model", path, "--out", tmp_path / "from-path", env=env)
    assert done.returncode == 0, done.stderr
    # Ollama's layout: a manifest naming the model layer by digest, the blob named after it.
    models = tmp_path / "ollama"
    digest = "sha256:" + "ab" * 32
    (models / "blobs").mkdir(parents=True)
    shutil.copy(path, models / "blobs" / digest.replace(":", "-"))
    manifest = models / "manifests" / "registry.ollama.ai" / "library" / "tiny-coder" / "0.5b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32, "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": path.stat().st_size}]}))
    done = cli("quantize", "--model", "tiny-coder:0.5b", "--out", tmp_path / "from-ollama",
               env={**env, "OLLAMA_MODELS": str(models)})
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "from-ollama" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]


def test_a_file_that_is_not_a_supported_gguf_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    env = {"CODE_ASSISTANT_GGUF_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for model in (bad, "missing-model:7b"):
        done = cli("quantize", "--model", model, "--out", tmp_path / "out", env={**env, "OLLAMA_MODELS": str(tmp_path)})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


# ---- FIM and end-of-text ids from the metadata ----------------------------------------------------
# A family whose FIM and end tokens have names the engine does not know, so that only the file's
# metadata can say which they are.
UNNAMED = Family("unnamed", "Qwen2Config", "Qwen2ForCausalLM",
                 ("<|endoftext|>", "<|fill_begin|>", "<|fill_hole|>", "<|fill_end|>", "<|turn_end|>"), "<|endoftext|>",
                 config={"tie_word_embeddings": True})


def with_special_ids(source: Path, out: Path, ids: dict[str, int]) -> Path:
    """A copy of `source` with token ids set in its metadata by llama.cpp's own gguf_new_metadata.py
    (`--special-token-by-id fim_pre 601`: what publishers of GGUF files use)."""
    script = LLAMA_CPP / "src" / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    if not script.is_file():
        pytest.skip(f"llama.cpp's gguf_new_metadata.py is not at {script}: run `{BUILD}`")
    args = [a for name, i in ids.items() for a in ("--special-token-by-id", name, str(i))]
    done = subprocess.run([sys.executable, str(script), str(source), str(out), "--force", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(LLAMA_CPP / "src" / "gguf-py")})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def unnamed_gguf(work) -> Path:
    hf = work / "unnamed-hf"
    save_random_model(hf, UNNAMED, TINY, initializer_range=0.1)
    return convert(hf, work / "unnamed-f32.gguf", "f32", "qwen2")


@pytest.mark.parametrize("keys", [("fim_pre", "fim_suf", "fim_mid"), ("prefix", "suffix", "middle")])
def test_fim_and_end_of_text_ids_come_from_the_metadata(keys, unnamed_gguf, work):
    tokens = list(GGUFFile(unnamed_gguf).get("tokenizer.ggml.tokens"))
    begin, hole, end, turn_end = (tokens.index(t) for t in ("<|fill_begin|>", "<|fill_hole|>", "<|fill_end|>",
                                                             "<|turn_end|>"))
    plain = load_tokenizer_from_dir(unnamed_gguf)  # no FIM ids in the file: by text, which finds none
    assert plain.fim is None and tokens[plain.eot_id] == "<|endoftext|>"

    path = with_special_ids(unnamed_gguf, work / f"unnamed-{keys[0]}.gguf",
                            {keys[0]: begin, keys[1]: hole, keys[2]: end, "eot": turn_end})
    tokenizer = load_tokenizer_from_dir(path)
    assert (tokenizer.fim.prefix, tokenizer.fim.suffix, tokenizer.fim.middle) == (begin, hole, end)
    assert tokenizer.eot_id == turn_end and turn_end in tokenizer.special_ids  # it ends a completion
    assert GGUFFile(path).get("tokenizer.ggml.eos_token_id") in tokenizer.special_ids  # and EOS still does
    engine = Engine.load(path, quantize=None, config=EngineConfig(**PLAIN))
    try:
        ids = engine.build_prompt("def f(x):\n    return ", "\n\nprint(f(2))\n", 8)
    finally:
        engine.close()
    assert ids[0] == begin and hole in ids and ids[-1] == end
    assert engine.tokenizer.decode(ids[1:ids.index(hole)]) == "def f(x):\n    return "


def test_ids_the_metadata_gives_outside_the_vocabulary_fall_back_to_text(work):
    path = tiny_gguf(work, "qwen2", "f32")
    tokens = list(GGUFFile(path).get("tokenizer.ggml.tokens"))
    broken = with_special_ids(path, work / "qwen2-half-fim.gguf", {"fim_pre": tokens.index("<|fim_suffix|>")})
    tokenizer = load_tokenizer_from_dir(broken)  # one of three ids is no FIM set: the names decide
    fim = (tokens[tokenizer.fim.prefix], tokens[tokenizer.fim.suffix], tokens[tokenizer.fim.middle])
    assert fim == ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def test_a_model_directory_with_bad_special_ids_is_a_clear_error(unnamed_gguf, tmp_path):
    from engine.gguf import gguf_to_model_dir
    from engine.model_dir import ModelDirError

    copy = tmp_path / "copy"
    shutil.copytree(gguf_to_model_dir(unnamed_gguf), copy)
    config = json.loads((copy / "config.json").read_text())
    for bad in ({"fim_token_ids": [1, 2]}, {"fim_token_ids": [1, 2, 10**9]}, {"eot_token_id": "2"}):
        (copy / "config.json").write_text(json.dumps({**config, "code_assistant": {**config["code_assistant"], **bad}}))
        with pytest.raises(ModelDirError, match="fim_token_ids|eot_token_id"):
            load_tokenizer_from_dir(copy)
