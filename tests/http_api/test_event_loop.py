"""Work that takes CPU time per request (tokenizing a 60,000-character prompt, building its cache
model) runs off the event loop, so /health and other clients keep answering while it happens."""
from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

BIG = ("def function_%d(argument):\n    return argument * %d + len(str(argument))\n\n" * 900)[:60_000]


async def health_latencies_ms(url: str, seconds: float) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert (await client.get("/health")).status_code == 200
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
    return latencies


async def big_prompt_clients(url: str, clients: int, seconds: float) -> int:
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        deadline = time.monotonic() + seconds

        async def one(i: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < deadline:
                n += 1
                # A different prompt each time: nothing comes from the response cache or the snippet cache.
                r = await client.post("/v1/completions", json={"prompt": f"# {i}.{n}\n" + BIG, "max_tokens": 1,
                                                               "temperature": 0})
                assert r.status_code == 200, r.text
                done += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
    return done


async def test_health_answers_quickly_while_8_clients_send_60k_character_prompts(server):
    idle = statistics.median(await health_latencies_ms(server.url, 1.0))
    load = asyncio.ensure_future(big_prompt_clients(server.url, 8, 6.0))
    await asyncio.sleep(1.0)  # the load is under way
    busy = await health_latencies_ms(server.url, 4.0)
    completions = await load
    p50 = statistics.median(busy)
    print(json.dumps({"health_p50_idle_ms": round(idle, 1), "health_p50_loaded_ms": round(p50, 1),
                      "health_p90_loaded_ms": round(sorted(busy)[int(0.9 * len(busy))], 1),
                      "big_completions": completions}))
    assert completions >= 8
    # Measured on 2 shared cores (load average 8-11): 1,114 ms with tokenizing on the loop, 9-56 ms off
    # it; the bound sits well between the two so that a busy CI machine does not fail it.
    assert p50 < max(200.0, 20 * idle), (idle, p50)
