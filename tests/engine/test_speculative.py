"""Speculative decoding with drafts from the context: the same greedy text, the same sampling
distribution, inside continuous batching."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.sampling import sample_token

from .conftest import PLAIN, generate_ids

HELDOUT = Path(__file__).parents[1] / "data" / "heldout"


def heldout_prompts(n: int, chars: int = 600) -> list[str]:
    """File beginnings cut mid-file: continuing them repeats names and patterns seen above."""
    files = sorted(HELDOUT.rglob("*.py"))
    texts = [f.read_text() for f in files]
    return [texts[i % len(texts)][:chars + 97 * i] for i in range(n)]


def test_greedy_text_is_the_same_with_and_without_drafts(tiny_model_dir):
    """Cache model and token healing on (the defaults): token for token."""
    spec = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(draft_tokens=8))
    plain = Engine.load(tiny_model_dir, quantize=None, config=EngineConfig(draft_tokens=0))
    try:
        params = SamplingParams(max_tokens=48)
        for prompt in heldout_prompts(6) + ["def f(x):\n    return x + 1\n\n\ndef g(x):\n    ret"]:
            a, b = generate_ids(spec, prompt, params)[0], generate_ids(plain, prompt, params)[0]
            assert a == b, prompt[-60:]
        stats = spec.stats
        assert stats["draft_tokens_accepted"] > 20 and plain.stats["draft_tokens_proposed"] == 0
        assert sum(stats["draft_accepted_by_position"]) == stats["draft_tokens_accepted"]
    finally:
        spec.close()
        plain.close()


def test_rows_with_and_without_drafts_share_steps(make_engine):
    """One request can never draft (its tokens never repeat), the others do; run together they
    give what each gives alone without speculation."""
    spec, plain = make_engine(max_batch=8, draft_tokens=6), make_engine(draft_tokens=0)
    t = spec.tokenizer
    distinct = [i for i in range(t.n_vocab) if i not in t.special_ids][:40]

    def never_repeats(request, logits):
        forced = torch.full_like(logits, float("-inf"))
        forced[distinct[len(request.output_ids)]] = 0.0
        return forced

    prompts = heldout_prompts(4, 300)
    processors = [never_repeats, None, None, None]
    params = SamplingParams(max_tokens=30)
    expected = [generate_ids(plain, p, params, logits_processor=f)[0] for p, f in zip(prompts, processors)]
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, generate_ids(spec, prompts[i], params, logits_processor=processors[i])[0])) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert [results[i] for i in range(4)] == expected
    assert spec.stats["draft_tokens_accepted"] > 0


def test_sample_token_with_a_draft_keeps_the_distribution():
    """Speculative sampling on a 5-token vocabulary: with any draft token, the chosen token is
    distributed as p (after temperature, top-k, top-p)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    for params in (SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4),
                   SamplingParams(temperature=1.3, top_p=0.8)):
        scaled = logits / params.temperature
        if params.top_k:
            scaled[scaled < torch.topk(scaled, params.top_k).values[-1]] = float("-inf")
        p = torch.softmax(scaled, -1)
        if params.top_p < 1:
            order = torch.argsort(p, descending=True)
            keep = torch.cumsum(p[order], 0) - p[order] < params.top_p
            p = torch.zeros_like(p).scatter_(0, order, p[order] * keep)
            p /= p.sum()
        for draft in (0, 3, 4):
            g = torch.Generator().manual_seed(draft)
            counts = torch.bincount(torch.tensor([sample_token(logits.clone(), params, g, draft) for _ in range(n)]),
                                    minlength=5).double()
            expected = p.double() * n
            seen = expected > 0
            assert counts[~seen].sum() == 0
            chi2 = float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())
            assert chi2 < 20.5, (params, draft, counts.tolist(), expected.tolist())  # df <= 4, p = 0.0004


def test_sampled_tokens_follow_the_model_distribution_with_drafts(make_engine):
    """A logits processor makes the next token a Markov chain over 4 tokens; sampling with
    drafts (accepted and rejected) reproduces its transition probabilities."""
    engine = make_engine(max_batch=4, draft_tokens=4, draft_min_match=1)
    t = engine.tokenizer
    states = [i for i in range(t.n_vocab) if i not in t.special_ids][100:104]
    transition = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.8, 0.1],
                               [0.25, 0.25, 0.25, 0.25], [0.6, 0.0, 0.0, 0.4]])

    def chain(request, logits):
        last = request.output_ids[-1] if request.output_ids else states[0]
        out = torch.full_like(logits, float("-inf"))
        out[states] = torch.log(transition[states.index(last)])
        return out

    counts = torch.zeros(4, 4)
    for seed in range(24):
        ids, _ = generate_ids(engine, t.decode(states * 6), SamplingParams(max_tokens=100, temperature=1.0, seed=seed),
                              logits_processor=chain)
        ids = [states[0]] + ids
        for a, b in zip(ids, ids[1:]):
            counts[states.index(a), states.index(b)] += 1
    stats = engine.stats
    assert stats["draft_tokens_proposed"] > 300 and 0 < stats["draft_tokens_accepted"] < stats["draft_tokens_proposed"]
    chi2, df = 0.0, 0
    for s in range(4):
        n = counts[s].sum()
        allowed = transition[s] > 0
        assert counts[s][~allowed].sum() == 0
        expected = transition[s][allowed] * n
        chi2 += float(((counts[s][allowed] - expected) ** 2 / expected).sum())
        df += int(allowed.sum()) - 1
    assert chi2 < df + 4 * math.sqrt(2 * df), (chi2, df, counts)


def test_a_continuation_that_copies_the_context_is_drafted_whole(make_engine):
    """The point of it: when the output repeats the context, nearly every token comes from a draft."""
    spec, plain = make_engine(draft_tokens=8), make_engine(draft_tokens=0)
    text = "".join(f"    self.field_{i} = field_{i}\n" for i in range(3))
    copy = spec.tokenizer.encode(text)

    def copier(request, logits):  # a "model" that writes the text once more
        out = torch.full_like(logits, float("-inf"))
        out[copy[len(request.output_ids) % len(copy)]] = 0.0
        return out

    params = SamplingParams(max_tokens=len(copy))
    a, _ = generate_ids(spec, text + text, params, logits_processor=copier)
    assert a == generate_ids(plain, text + text, params, logits_processor=copier)[0] == copy
    stats = spec.stats
    # Each step forwards the last token and 8 drafted ones and yields 9 tokens: one in 9 is the model's own.
    assert stats["draft_tokens_accepted"] >= len(copy) * 8 // 9 - 2
    assert stats["draft_tokens_accepted"] == stats["draft_tokens_proposed"]


def test_the_workspace_index_drafts_what_only_it_holds(make_engine, tmp_path):
    """A continuation found only in another file of the workspace is drafted from the index."""
    from engine.workspace import WorkspaceIndex

    spec = make_engine(draft_tokens=8)
    text = ("        self.alpha = compute_alpha(seed, rounds=3)\n"
            "        self.beta_value = transform(self.alpha, scale)\n"
            "        return merge(self.beta_value, other.gamma)\n")
    (tmp_path / "other.py").write_text("class Other:\n    def __init__(self, seed, scale, other):\n" + text)
    index = WorkspaceIndex(spec.tokenizer.encode)
    index.build([(str(tmp_path / "other.py"), (tmp_path / "other.py").read_text())])
    spec.use_workspace(index)
    copy = spec.tokenizer.encode(text)

    def copier(request, logits):  # a "model" that writes the other file's lines
        out = torch.full_like(logits, float("-inf"))
        out[copy[len(request.output_ids) % len(copy)]] = 0.0
        return out

    prompt = "class Mine:\n    def __init__(self):\n"
    a, _ = generate_ids(spec, prompt, SamplingParams(max_tokens=len(copy)), logits_processor=copier)
    assert a == copy
    with_index = spec.stats["draft_tokens_accepted"]
    spec.use_workspace(None)
    generate_ids(spec, prompt, SamplingParams(max_tokens=len(copy)), logits_processor=copier)
    alone = spec.stats["draft_tokens_accepted"] - with_index  # the request's own repetitions only
    assert with_index >= len(copy) * 2 // 3 and alone < with_index // 3, (with_index, alone)


def test_drafts_switch_off_while_the_model_rejects_them_and_back_on_when_it_copies(make_engine):
    """A request whose drafts are rejected stops drafting (they only widen its steps) and drafts
    again after a pause once the model copies; the text is the same as without drafts."""
    spec, plain = make_engine(draft_tokens=8), make_engine(draft_tokens=0)
    t = spec.tokenizer
    distinct = [i for i in range(t.n_vocab) if i not in t.special_ids]
    a, b, fresh = distinct[400], distinct[401], distinct[402:460]
    phase = 45
    seen = {}

    def model(request, logits):
        """First "a b x0 a b x1 a b x2 ...": after every "a b" a draft proposes what followed the
        last "a b" and the model says a new x; then the prompt again and again, which drafts copy."""
        n = len(request.output_ids)
        if n == phase and request.drafts:
            seen.setdefault("at_switch", dict(spec.stats))
        if n < phase:
            token = (a, b, fresh[n // 3])[n % 3]
        else:
            token = request.prompt_ids[(n - phase) % len(request.prompt_ids)]
        out = torch.full_like(logits, float("-inf"))
        out[token] = 0.0
        return out

    prompt = t.decode(distinct[300:320])
    params = SamplingParams(max_tokens=2 * phase)
    with_drafts, _ = generate_ids(spec, prompt, params, logits_processor=model)
    assert with_drafts == generate_ids(plain, prompt, params, logits_processor=model)[0]
    before, after = seen["at_switch"], spec.stats
    # Without the switch every third token of the first phase drafts 8 rejected tokens (112 here).
    assert 0 < before["draft_tokens_proposed"] <= 48 and before["draft_tokens_accepted"] <= 2, before
    assert after["draft_tokens_accepted"] - before["draft_tokens_accepted"] >= phase // 2, (before, after)
