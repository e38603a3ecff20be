"""Output: what a request's next-token logits become for the caller.

`choose` picks the token (the request's logits processor, the token-healing mask, penalties,
sampling); `accept` records it and turns it into text: special tokens end the request, the bytes
of a healed token the user already has are skipped, UTF-8 is decoded incrementally, stop strings
and the loop guard cut the text, max_tokens and the model's context end it; what is safe to show
goes out as a Chunk. Output never touches the KV pool: `accept` returns the finish reason and
the scheduler releases the request's blocks before calling `finish`.
"""
from __future__ import annotations

import logging
import time

import torch

from .healing import HealingMasks
from .request import Chunk, Request
from .sampling import apply_penalties, sample_token
from .tokenizer import Tokenizer

log = logging.getLogger("engine")


class Output:
    def __init__(self, tokenizer: Tokenizer, context_end: int, device: torch.device = torch.device("cpu")):
        self.special_ids = tokenizer.special_ids
        self.n_vocab = tokenizer.n_vocab
        self.token_bytes = tokenizer.token_bytes()
        self.heal_mask = HealingMasks(self.token_bytes, tokenizer.n_vocab, device)
        self.context_end = context_end   # a sequence this long finishes with "length"
        self.tokens_generated = 0        # over all requests, for stats

    def choose(self, request: Request, logits: torch.Tensor, draft: int | None = None) -> int:
        """The next token from one row of logits, after the request's logits processor and the
        token-healing mask; `draft` is the token a draft proposes here (see sample_token)."""
        # Models pad their embedding past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens);
        # the padding rows are never chosen.
        if logits.shape[0] > self.n_vocab:
            logits = logits[:self.n_vocab]
        if request.logits_processor is not None:
            logits = request.logits_processor(request, logits)
        if request.heal:
            logits = logits.masked_fill(~self.heal_mask(request.heal), float("-inf"))
        apply_penalties(logits, request.params, request.output_ids)
        return sample_token(logits, request.params, request.generator, draft)

    def argmax(self, logits: torch.Tensor) -> list[list[int]]:
        """The argmax over the tokenizer's vocabulary of every row and position of a step's (B, T,
        vocab) logits, in one call: indexing a row out of the tensor alone cost ~12 us, 32 rows a
        third of a millisecond a step. The first of equal logits, as torch.argmax."""
        logits = logits[..., :self.n_vocab]
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
            return logits.numpy().argmax(axis=-1).tolist()
        return torch.argmax(logits, dim=-1).tolist()

    @staticmethod
    def takes_argmax(request: Request) -> bool:
        """Whether `choose` would return the plain argmax: greedy, with nothing that changes the logits."""
        params = request.params
        return (params.greedy and request.logits_processor is None and not request.heal
                and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0)

    def accept(self, request: Request, token: int) -> str | None:
        """Record a chosen token (its KV is written by the next forward) and send the text that is
        safe to show; the finish reason when the request ends here ("stop" or "length"), else None."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in self.special_ids:  # end of text, a new file, the end of an infill
            return "stop"
        request.output_ids.append(token)
        request.tokens.append(token)
        if request.own_index is not None:
            request.own_index.append(token)
        self.tokens_generated += 1
        data = self.token_bytes[token]
        if request.heal:
            request.heal = request.heal[len(data):] if request.heal.startswith(data) else b""
        if request.skip_bytes:
            skipped = min(request.skip_bytes, len(data))
            data, request.skip_bytes = data[skipped:], request.skip_bytes - skipped
            request.healing_tokens += not data
        request.text += request.decoder.decode(data)
        params = request.params
        # Cut at the earliest stop string, whichever of them it is ("\n" listed before "):" must
        # not leave a "):" that came first).
        cuts = [cut for cut in (request.text.find(stop, max(0, request.emitted - len(stop))) for stop in params.stop)
                if cut != -1]
        if cuts:
            request.text = request.text[:min(cuts)]
            return "stop"
        if request.guard is not None:
            cut, request.safe = request.guard.check(request.text)
            if cut is not None:
                request.text = request.text[:cut]
                return "stop"
        if request.generated >= params.max_tokens or len(request.tokens) >= self.context_end:
            return "length"
        self.emit(request)
        return None

    def emit(self, request: Request) -> None:
        # Hold back a tail that could be the start of a stop string, or the start of a repeat.
        hold = max((len(s) - 1 for s in request.params.stop), default=0)
        safe = len(request.text) - hold
        if request.guard is not None:
            safe = min(safe, request.safe)
        if safe > request.emitted:
            self.send(request, Chunk(request.text[request.emitted:safe], request.generated))
            request.emitted = safe

    def finish(self, request: Request, reason: str) -> None:
        """The last chunk: what is left of the text, with the finish reason."""
        # Bytes of a character the last token left incomplete are dropped, never shown half.
        if request.guard is not None and reason != "cancelled":
            cut, _ = request.guard.check(request.text, finished=True)
            if cut is not None and cut >= request.emitted:
                request.text = request.text[:cut]
        self.send(request, Chunk(request.text[request.emitted:], request.generated, reason))
        request.emitted = len(request.text)

    def fail(self, request: Request, message: str) -> None:
        request.error = message
        self.send(request, Chunk("", request.generated, "error"))

    def send(self, request: Request, chunk: Chunk) -> None:
        """Hand a chunk to the caller; a callback that fails (its event loop already closed, say)
        cancels only its own request, never the batch or the scheduler."""
        chunk.prompt_tokens = len(request.prompt_ids)
        try:
            request.on_chunk(chunk)
        except Exception:
            log.warning("dropping a request whose chunk callback failed", exc_info=True)
            request.cancel()
