"""engine is the core: it must not pull in training, the front ends or their frameworks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("training", "lightning", "pytorch_lightning", "fastapi", "http_api", "lsp_server", "pygls", "uvicorn")


def test_engine_imports_nothing_it_must_not():
    code = ("import json, sys, engine, engine.engine, engine.quantize, engine.kv_cache, engine.sampling, "
            "engine.model_dir, engine.model, engine.tokenizer; print(json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"engine imported {bad}"
