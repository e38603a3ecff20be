"""What a newcomer sees at `make serve`: the server says plainly what the shipped model is and how
to serve a real one, and says nothing of the kind for any other model."""
from __future__ import annotations

import json
import time
from pathlib import Path

from http_api.app import SHIPPED_MODEL_NOTE

ROOT = Path(__file__).resolve().parents[2]


def test_serving_the_shipped_model_says_what_it_is_and_names_a_real_model(start_server, tiny_model_dir):
    shipped = start_server(ROOT / "models" / "default")
    other = start_server(tiny_model_dir)
    assert SHIPPED_MODEL_NOTE in start_log(shipped)
    assert "--model Qwen/Qwen2.5-Coder-0.5B" in SHIPPED_MODEL_NOTE
    assert SHIPPED_MODEL_NOTE not in start_log(other)


def test_the_start_log_says_the_budgets_timed_at_start(start_server, tiny_model_dir):
    loaded = next(json.loads(line) for line in start_log(start_server(tiny_model_dir)).splitlines()
                  if '"model_loaded"' in line)
    assert loaded["prefill_step_tokens"] > 0 and loaded["suffix_tokens"] >= 0


def start_log(server) -> str:
    """The log up to the start's last line (/ready answers as soon as the model serves, a moment before)."""
    deadline = time.monotonic() + 10
    while '"model_loaded"' not in (log := server.log()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    return server.log()
