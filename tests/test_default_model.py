"""The shipped default model: used when no model is named, small, int8, and useful with its cache."""
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from engine import Engine, SamplingParams
from engine.model_dir import default_model_dir, read_model_dir

from .http_api.conftest import free_port, serve_command

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


def test_default_model_ships_int8_and_small():
    assert default_model_dir() == DEFAULT
    assert read_model_dir(DEFAULT).quantization["method"] == "int8-per-channel"
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    assert (DEFAULT / "MODEL_CARD.md").is_file() and (DEFAULT / "loss_curve.png").is_file()


def test_engine_loads_it_by_default_and_completes_names_from_the_file():
    engine = Engine.load()
    try:
        code = ("def very_specific_name_42(items, scale):\n    return [x * scale for x in items]\n\n\n"
                "def main(values):\n    result = very_spec")
        done = engine.complete(code, params=SamplingParams(max_tokens=12, stop=["\n"]))
        assert done.text.startswith("ific_name_42(")
        assert json.loads((DEFAULT / "summary.json").read_text())["val_bpb"] < 2.0
    finally:
        engine.close()


def test_serve_without_model_serves_the_default():
    port = free_port()
    proc = subprocess.Popen(serve_command() + ["--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        body = httpx.post(url + "/complete", json={"code": "import os\n\n\ndef main():\n    ", "max_tokens": 8,
                                                   "temperature": 0}, timeout=30).json()
        assert body["model"] == "default" and body["tokens"] >= 1
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
