"""Small local fakes of the servers a team may already run, answering with the request and response
shapes their documentation gives (and 400 for a request that lacks what they require):

- OpenAI-compatible (vLLM, TGI, LM Studio): GET /v1/models -> {"data": [{"id", "max_model_len"}]};
  POST /v1/completions {model, prompt, max_tokens, temperature, stop?, suffix?} ->
  {"id", "object": "text_completion", "choices": [{"text", "index", "finish_reason"}]};
- llama.cpp llama-server: GET /props -> {"default_generation_settings": {"n_ctx"}}; POST /infill
  {input_prefix, input_suffix, input_extra: [{filename, text}], prompt, n_predict, ...} ->
  {"content", "stop", "tokens_predicted"};
- Ollama: POST /api/show {model} -> {"model_info": {"<arch>.context_length"}}; POST /api/generate
  {model, prompt, suffix, stream: false, options: {num_predict, temperature, stop, num_ctx}} ->
  {"model", "response", "done": true}.

Each answers ANSWER and records every request body in `requests`.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, HTTPException, Request

ANSWER = "sum(values) / len(values)"
CONTEXT = 4096


def _require(body: dict, *fields: str) -> None:
    missing = [f for f in fields if f not in body]
    if missing:
        raise HTTPException(400, f"missing {missing}")


def fake_app(kind: str, requests: list) -> FastAPI:
    app = FastAPI()

    if kind == "openai":
        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "Qwen/Qwen2.5-Coder-1.5B", "object": "model",
                                                "max_model_len": CONTEXT}]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            requests.append(body)
            _require(body, "model", "prompt")
            if body["model"] != "Qwen/Qwen2.5-Coder-1.5B":
                raise HTTPException(404, "The model does not exist.")
            return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"text": ANSWER, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    if kind == "llama.cpp":
        @app.get("/props")
        async def props():
            return {"default_generation_settings": {"n_ctx": CONTEXT, "params": {"n_predict": -1}}, "total_slots": 1}

        @app.post("/infill")
        async def infill(request: Request):
            body = await request.json()
            requests.append(body)
            _require(body, "input_prefix", "input_suffix")
            for extra in body.get("input_extra", []):
                if set(extra) != {"filename", "text"}:
                    raise HTTPException(400, "input_extra items are {filename, text}")
            return {"content": ANSWER, "stop": True, "tokens_predicted": 8, "timings": {}}

    if kind == "ollama":
        @app.post("/api/show")
        async def show(request: Request):
            body = await request.json()
            _require(body, "model")
            return {"model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768}}

        @app.post("/api/generate")
        async def generate(request: Request):
            body = await request.json()
            requests.append(body)
            _require(body, "model", "prompt")
            if body.get("stream", True):
                raise HTTPException(400, "this fake answers stream: false only")
            return {"model": body["model"], "created_at": "2024-01-01T00:00:00Z", "response": ANSWER, "done": True,
                    "done_reason": "stop"}

    return app


@contextmanager
def running(kind: str):
    """(url, requests) of a fake `kind` server on a free port of 127.0.0.1."""
    requests: list = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake_app(kind, requests), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        server.should_exit = True
        thread.join(timeout=10)
