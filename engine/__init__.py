"""The inference engine: the one API the HTTP server, the language server and the benchmarks call.

Names are imported on first use, so a front end that only needs `engine.prompt` (the language
server talking to a remote server) never loads torch.
"""
from __future__ import annotations

import importlib

_WHERE = {"Chunk": "engine", "Completion": "engine", "Engine": "engine", "EngineBusy": "engine",
          "EngineConfig": "config", "EngineError": "engine", "ModelDirError": "model_dir",
          "CompletionInput": "inputs", "ContextFile": "inputs", "SamplingError": "sampling_params",
          "SamplingParams": "sampling_params"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
