"""Time per token with the context cache model and token healing on vs off (the shipped model,
int8, real file prompts from the held-out set, 128 new tokens, alternating runs). The loop guard
is off in both (it would end the "on" runs early); its own cost per token is timed apart.

    python benchmarks/cache_overhead.py
"""
import time, statistics
from pathlib import Path
from engine import Engine, EngineConfig, SamplingParams
files = sorted(Path("tests/data/heldout/tinydb").glob("*.py"))
prompts = [f.read_text()[:3000] for f in files]
on = Engine.load(None, quantize="int8", config=EngineConfig(max_batch=4))
off = Engine.load(None, quantize="int8", config=EngineConfig(max_batch=4, cache_weight=0.0, token_healing=False,
                                                            stop_loops=False))
def per_token(engine, params):
    t = time.perf_counter(); n = 0
    for p in prompts:
        d = engine.complete(p, params=params); n += d.tokens
    return (time.perf_counter() - t) / n
p_on = SamplingParams(max_tokens=128, stop=[], stop_loops=False); p_off = SamplingParams(max_tokens=128, cache_weight=0.0)
for e, p in ((on, p_on), (off, p_off)): per_token(e, p)  # warm up
a, b = [], []
for _ in range(5):
    a.append(per_token(on, p_on)); b.append(per_token(off, p_off))
print("ms/token on", [round(x*1e3, 3) for x in a]); print("ms/token off", [round(x*1e3, 3) for x in b])
print("overhead median", round(statistics.median(a) / statistics.median(b) - 1, 3))

from engine.repetition import RepetitionGuard
text = off.complete(prompts[0], params=p_off).text
guard = RepetitionGuard.for_prompt(prompts[0], None)
pieces = [off.tokenizer.decode([t]) for t in off.tokenizer.encode(text)]
t = time.perf_counter()
for i in range(1, len(pieces) + 1):
    guard.check("".join(pieces[:i]))
print("loop guard us/token", round((time.perf_counter() - t) / len(pieces) * 1e6, 1))
