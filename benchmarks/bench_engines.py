"""One inference engine per process, driven by `code-assistant bench engine` over stdin/stdout.

Each engine runs in its own process so that its memory is its own (RSS is measured per engine),
its threads are set before it starts and never meet another engine's, and one that crashes
takes nothing else down. Commands are JSON lines:

  {"op": "generate", "ids": [...], "text": "...", "n": 64}
      -> {"tokens": [...], "ttft_s": ..., "total_s": ...}   greedy, batch 1
  {"op": "streams", "ids": [[...], ...], "texts": [...], "n": 64}
      -> {"tokens": N, "seconds": ...}                     the engine's own way to serve many
  {"op": "rss"} -> {"rss_mb": ..., "peak_rss_mb": ...}

Every engine gets the same prompt token ids (ours builds them from the same text) and makes
exactly `n` new tokens where it can (ours stops at an end-of-text token, as it does for users).

Weights: `ours`, `ours-pytorch`: int8 per row; `ours-int4`: int4 groups of 32 (engine/quantize.py);
`llama.cpp`: GGUF q8_0; `llama.cpp-q4_k_m`: GGUF Q4_K_M (llama-quantize). llama.cpp runs through
llama-cpp-python where it is installed, else through the llama-server that scripts/build-llama-cpp.sh
builds from the same llama.cpp source (one slot, token ids over loopback HTTP); the ready line says which.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("ours", "ours-int4", "ours-pytorch", "transformers", "ctranslate2", "llama.cpp", "llama.cpp-q4_k_m")
# The GGUF type each llama.cpp engine runs (benchmarks/bench_models.py's gguf_file makes it).
GGUF_TYPES = {"llama.cpp": "q8_0", "llama.cpp-q4_k_m": "q4_k_m"}
INSTALL = "pip install -e '.[bench-engines]' (llama-cpp-python builds from source: docs/engine.md)"


def llama_server_binary() -> Path:
    from .bench_models import LLAMA_CPP_HOME

    return LLAMA_CPP_HOME / "bin" / "llama-server"


def has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def missing(engine: str) -> str | None:
    """Why `engine` cannot run here, or None."""
    if engine in GGUF_TYPES:
        if has_module("llama_cpp") or llama_server_binary().is_file():
            return None
        return f"llama_cpp is not installed ({INSTALL}), nor is {llama_server_binary()} (scripts/build-llama-cpp.sh)"
    module = {"transformers": "transformers", "ctranslate2": "ctranslate2"}.get(engine)
    if module is None or has_module(module):
        return None
    return f"{module} is not installed ({INSTALL})"


def cpu_s() -> float:
    """CPU seconds of this process, every thread: on a shared machine this, not the wall clock,
    says what a decode step costs."""
    return time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: exact, where getrusage counts in ticks


def peak_rss_mb() -> float:
    """VmHWM: this process's own high-water mark (getrusage's ru_maxrss keeps the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Ours:
    def __init__(self, artifacts: dict, threads: int, max_batch: int, kernels: bool = True, quantize: str = "int8"):
        import torch

        from engine import CompletionInput, Engine, EngineConfig, SamplingParams

        torch.set_num_threads(threads)
        self.params, self.job = SamplingParams, CompletionInput
        # The network alone, as the other engines run: healing, the context cache model, the loop
        # guard and drafts (speculative decoding: benchmarks/speculative_bench.py) off.
        config = EngineConfig(max_batch=max_batch, token_healing=False, cache_weight=0.0, stop_loops=False,
                              draft_tokens=0, kernels=kernels)
        self.engine = Engine.load(artifacts["hf"], quantize=quantize, config=config)

    def generate(self, ids: list[int], text: str, n: int) -> dict:
        import threading

        finished = threading.Event()
        cpu = []

        def on_chunk(chunk) -> None:
            if not cpu:
                cpu.append(cpu_s())
            if chunk.finish_reason:
                cpu.append(cpu_s())
                finished.set()

        start = time.perf_counter()
        request = self.engine.submit(self.job(text, params=self.params(max_tokens=n)), on_chunk)
        finished.wait()
        total = time.perf_counter() - start
        if ids and request.prompt_ids != ids:
            raise RuntimeError(f"our prompt has {len(request.prompt_ids)} tokens, the others got {len(ids)}")
        return {"tokens": list(request.output_ids), "ttft_s": request.first_token_at - request.submitted,
                "total_s": total, "decode_cpu_s": cpu[-1] - cpu[0]}

    def streams(self, ids: list[list[int]], texts: list[str], n: int) -> dict:
        """Every request at once; besides the totals, the decoding rate once every stream has its
        first token (prompts done: what batching the decode steps gives)."""
        import threading

        left = threading.Semaphore(0)
        lock = threading.Lock()
        count, started, decoded = [0], set(), [0.0, 0]  # decoded: when the last stream started, tokens since
        seen = [0] * len(texts)  # each stream's tokens so far

        def on_chunk(i: int):
            def call(chunk) -> None:
                with lock:
                    if len(started) == len(texts):
                        decoded[1] += chunk.tokens - seen[i]
                    seen[i] = chunk.tokens
                    if i not in started:
                        started.add(i)
                        if len(started) == len(texts):
                            decoded[0] = time.perf_counter()
                    if chunk.finish_reason:
                        count[0] += chunk.tokens
                        left.release()
            return call

        start = time.perf_counter()
        for i, text in enumerate(texts):
            self.engine.submit(self.job(text, params=self.params(max_tokens=n)), on_chunk(i))
        for _ in texts:
            left.acquire()
        end = time.perf_counter()
        result = {"tokens": count[0], "seconds": end - start}
        if decoded[1]:
            result["decode_tokens_per_s"] = decoded[1] / (end - decoded[0])
        return result


class Transformers:
    """transformers' generate (greedy, its KV cache) on the float model with its linear layers
    through torch's quantize_dynamic (FBGEMM int8): what a PyTorch user reaches for first."""

    def __init__(self, artifacts: dict, threads: int, max_batch: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(artifacts["hf"], torch_dtype=torch.float32).eval()
        self.model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.torch = torch

    def _generate(self, batch, n: int, streamer=None, attention_mask=None):
        with self.torch.no_grad():
            return self.model.generate(batch, attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, streamer=streamer, pad_token_id=0)

    def generate(self, ids: list[int], text: str, n: int) -> dict:
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self):
                self.times = []

            def put(self, value):
                self.times.append(time.perf_counter())
                self.cpu = getattr(self, "cpu", []) + [cpu_s()]

            def end(self):
                pass

        clock = Clock()
        start = time.perf_counter()
        out = self._generate(self.torch.tensor([ids]), n, clock)
        total = time.perf_counter() - start
        return {"tokens": out[0, len(ids):].tolist(), "ttft_s": clock.times[1] - start, "total_s": total,
                "decode_cpu_s": cpu_s() - clock.cpu[1]}

    def streams(self, ids: list[list[int]], texts: list[str], n: int) -> dict:
        width = max(map(len, ids))  # left-padded into one batched generate
        batch = self.torch.tensor([[0] * (width - len(r)) + r for r in ids])
        mask = self.torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        start = time.perf_counter()
        out = self._generate(batch, n, attention_mask=mask)
        return {"tokens": (out.shape[1] - width) * len(ids), "seconds": time.perf_counter() - start}


class CTranslate2:
    def __init__(self, artifacts: dict, threads: int, max_batch: int):
        import ctranslate2

        self.generator = ctranslate2.Generator(str(artifacts["ctranslate2"]), device="cpu", compute_type="int8",
                                               intra_threads=threads, inter_threads=1)
        vocab = Path(artifacts["ctranslate2"]) / "vocabulary.json"
        self.vocab = json.loads(vocab.read_text())
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.max_batch = max_batch

    def generate(self, ids: list[int], text: str, n: int) -> dict:
        times, cpu = [], []  # the callback runs on the generating thread as each token is chosen

        def callback(step) -> bool:
            times.append(time.perf_counter())
            if not cpu:
                cpu.append(cpu_s())
            return False

        start = time.perf_counter()
        result = self.generator.generate_batch([[self.vocab[i] for i in ids]], max_length=n, min_length=n,
                                               sampling_topk=1, end_token=[], include_prompt_in_result=False,
                                               callback=callback)
        total = time.perf_counter() - start
        return {"tokens": result[0].sequences_ids[0], "ttft_s": times[0] - start, "total_s": total,
                "decode_cpu_s": cpu_s() - cpu[0]}

    def streams(self, ids: list[list[int]], texts: list[str], n: int) -> dict:
        start = time.perf_counter()
        results = self.generator.generate_batch([[self.vocab[i] for i in r] for r in ids], max_length=n,
                                                min_length=n, sampling_topk=1, end_token=[],
                                                include_prompt_in_result=False, max_batch_size=self.max_batch)
        return {"tokens": sum(len(r.sequences_ids[0]) for r in results), "seconds": time.perf_counter() - start}


class LlamaCpp:
    backend = "llama-cpp-python"

    def __init__(self, gguf: str, context: int, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=context, n_threads=threads,
                                   n_threads_batch=threads, n_batch=512, verbose=False)

    def generate(self, ids: list[int], text: str, n: int) -> dict:
        start = time.perf_counter()
        first, tokens = None, []
        for token in self.llm.generate(ids, top_k=1, temp=0.0, reset=True):
            if first is None:
                first, cpu = time.perf_counter(), cpu_s()
            tokens.append(token)
            if len(tokens) == n:
                break
        return {"tokens": tokens, "ttft_s": first - start, "total_s": time.perf_counter() - start,
                "decode_cpu_s": cpu_s() - cpu}

    def streams(self, ids: list[list[int]], texts: list[str], n: int) -> dict:
        """One after another: llama-cpp-python's Llama holds one sequence (its server's parallel
        slots are another setup)."""
        start = time.perf_counter()
        count = sum(len(self.generate(r, "", n)["tokens"]) for r in ids)
        return {"tokens": count, "seconds": time.perf_counter() - start}


class LlamaServer:
    """llama.cpp's llama-server (scripts/build-llama-cpp.sh) on the GGUF: one slot, its default
    threading, /completion with token ids, streamed, greedy, the end-of-text token ignored so that
    it makes `n` tokens as llama-cpp-python's generate does. Its CPU time is the server process's."""

    backend = "llama-server"

    def __init__(self, gguf: str, context: int, threads: int):
        import tempfile

        import httpx

        from .http_bench import free_port, wait_ready

        self.httpx = httpx
        self.log = Path(tempfile.mkdtemp(prefix="bench-llama-server-")) / "llama-server.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(llama_server_binary()), "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", "1",
             "-c", str(context), "-t", str(threads), "-tb", str(threads), "-b", "512", "--no-cache-prompt"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        atexit.register(lambda: (self.proc.terminate(), self.proc.wait(timeout=30)))
        wait_ready(self.proc, self.url + "/health", self.log, "llama-server")

    def server_cpu_s(self) -> float:
        """The server's threads' CPU seconds, from schedstat's nanoseconds (/proc/PID/stat counts 10 ms ticks)."""
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{self.proc.pid}/task").iterdir()) / 1e9

    def generate(self, ids: list[int], text: str, n: int) -> dict:
        """A token that ends inside a UTF-8 character is not streamed (the server waits for the rest):
        it is counted from `tokens_predicted` and listed as -1."""
        body = {"prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1, "stream": True, "ignore_eos": True,
                "cache_prompt": False}
        start = time.perf_counter()
        first, tokens = None, []
        with self.httpx.stream("POST", self.url + "/completion", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("tokens") and first is None:
                    first, cpu = time.perf_counter(), self.server_cpu_s()
                held_back = event.get("tokens_predicted", 0) - len(tokens) - len(event.get("tokens") or [])
                tokens += [-1] * max(0, held_back) + (event.get("tokens") or [])
        return {"tokens": tokens, "ttft_s": first - start, "total_s": time.perf_counter() - start,
                "decode_cpu_s": self.server_cpu_s() - cpu}

    def streams(self, ids: list[list[int]], texts: list[str], n: int) -> dict:
        """One after another, as for llama-cpp-python (the capacity benchmark runs its parallel slots)."""
        start = time.perf_counter()
        count = sum(len(self.generate(r, "", n)["tokens"]) for r in ids)
        return {"tokens": count, "seconds": time.perf_counter() - start}

    def rss(self) -> dict:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return {"rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1)}


def make(engine: str, artifacts: dict, threads: int, max_batch: int):
    if engine in ("ours", "ours-int4", "ours-pytorch"):
        return Ours(artifacts, threads, max_batch, kernels=engine != "ours-pytorch",
                    quantize="int4" if engine == "ours-int4" else "int8")
    if engine in GGUF_TYPES:
        runner = LlamaCpp if has_module("llama_cpp") else LlamaServer
        return runner(artifacts[f"gguf-{GGUF_TYPES[engine]}"], artifacts["context"], threads)
    return {"transformers": Transformers, "ctranslate2": CTranslate2}[engine](artifacts, threads, max_batch)


def serve(engine: str, artifacts: dict, threads: int, max_batch: int) -> None:
    rss0 = rss_mb()
    runner = make(engine, artifacts, threads, max_batch)
    out = sys.stdout
    sys.stdout = sys.stderr  # engines that print must not break the protocol
    own_rss = getattr(runner, "rss", None)  # an engine in a process of its own measures that one
    load_mb = own_rss()["rss_mb"] if own_rss else rss_mb() - rss0
    print(json.dumps({"ready": True, "rss_load_mb": round(load_mb, 1), "backend": getattr(runner, "backend", engine)}),
          file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "generate":
                reply = runner.generate(cmd["ids"], cmd["text"], cmd["n"])
            elif cmd["op"] == "streams":
                reply = runner.streams(cmd["ids"], cmd["texts"], cmd["n"])
            elif cmd["op"] == "rss":
                reply = own_rss() if own_rss else {"rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
            else:
                reply = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as e:  # reported to the driver, which records it beside the engine's numbers
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
