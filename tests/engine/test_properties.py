"""Any mix of prompts, batch sizes and stop strings: no exception, max_tokens respected."""
from __future__ import annotations

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import CompletionInput, SamplingParams

CORPUS = ("import json\n\nclass Decoder(object):\n    def __init__(self, strict=True):\n        self.strict = strict\n"
          "    def decode(self, s):\n        return json.loads(s)  # é ü 😀\n\n\ndef main(argv=None):\n    pass\n")

request_strategy = st.fixed_dictionaries({
    "start": st.integers(0, len(CORPUS)),
    "length": st.integers(0, 600),
    "suffix": st.one_of(st.none(), st.text(max_size=40)),
    "max_tokens": st.integers(1, 40),
    "stop": st.lists(st.one_of(st.sampled_from(["\n", "):", "e", "  ", "return", "\n\n", "é"]),
                               st.text(min_size=1, max_size=4)), max_size=3),
    "temperature": st.sampled_from([0.0, 0.0, 0.8]),
    "seed": st.integers(0, 1000),
})


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests=st.lists(request_strategy, min_size=1, max_size=6))
def test_any_batch_finishes_within_its_limits(requests, make_engine_session):
    engine = make_engine_session
    done = threading.Semaphore(0)
    results = []
    submitted = []
    for r in requests:
        text = (CORPUS * 6)[r["start"]:r["start"] + r["length"]]
        params = SamplingParams(max_tokens=r["max_tokens"], stop=r["stop"], temperature=r["temperature"],
                                seed=r["seed"])
        chunks: list = []

        def on_chunk(chunk, chunks=chunks):
            chunks.append(chunk)
            if chunk.finish_reason:
                done.release()
        submitted.append((engine.submit(CompletionInput(text, r["suffix"], params=params), on_chunk), params, chunks))
    for _ in submitted:
        assert done.acquire(timeout=30)
    for request, params, chunks in submitted:
        text = "".join(c.text for c in chunks)
        assert chunks[-1].finish_reason in ("stop", "length")
        # Token healing re-spells the prompt's last chunk first; those tokens are not new text and
        # are not counted against max_tokens.
        assert chunks[-1].tokens <= params.max_tokens
        assert len(request.output_ids) - request.healing_tokens <= params.max_tokens
        assert not any(s in text for s in params.stop)
        assert all(c.finish_reason is None for c in chunks[:-1])
    assert engine.stats["running_batch_size"] == 0 or engine.queue_depth() == 0
