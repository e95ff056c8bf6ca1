"""Activation proofs while serving: what the node server attaches to a request whose trace will be
stored, and the proof entries the trace keeps.

    proofs = RequestProofs()
    request.capture_hidden, request.hidden_sink = True, proofs.sink      # scheduler thread feeds it
    ...
    record.pending_proofs = proofs.pending(result, TokenizerOps.of(engine, result.identity))
    trace.proofs = record.pending_proofs.finish(trace.prompt)            # the trace writer's thread

On the scheduler thread the sink only selects each chunk's top-k (a request holds at most one
chunk of rows); the rest (the chunks' polynomial encoding, re-tokenizing to decide which ids to
keep) runs in the trace writer's thread, off the request path.

Stored layout (`Trace.proofs`, read by traces/verify.py proof_entries): one dict per proven choice,
    {scheme, prompt_len, positions, chunk_tokens, top_k, dtype, chunks: [base64 ...],   # ActivationProof.to_dict()
     choice_index,
     prompt_ids?   only when rendering the stored messages with the chat template does not give
                   back the ids the model saw (e.g. a `developer` message the engine ran as system)
     reply_ids?}   only when re-encoding the reply text (plus end-of-sequence for finish_reason
                   "stop") does not give back the sampled ids (a stop string cut the text, a
                   sampled non-canonical tokenization, a cancelled reply)
The engine feeds every sampled token back once more (its `tail` step), so a proof normally covers
prompt_len + len(reply_ids) positions and binds the last token too. A proof that cannot be built
(non-finite states, a cancelled row) costs that choice's proof, never the reply. The trace writer
replaces the proofs of a redacted trace by REDACTED_PROOF markers (traces/writer.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from inference.proofs import CHUNK_TOKENS, TOP_K, ProofBuilder, ProofError

log = logging.getLogger("swarmloop.proofs")


def reencoded_reply_ids(encode: Callable[[str], list[int]], eos_token_id: int | None, text: str,
                        finish_reason: str, prompt_len: int, positions: int) -> list[int]:
    """The reply ids a verifier rebuilds from the stored text (federation/ingest.py does the same):
    the text re-encoded, plus end-of-sequence when the reply stopped on it and the proof covers
    one position more than the text."""
    ids = list(encode(text))
    if finish_reason == "stop" and eos_token_id is not None and positions >= prompt_len + len(ids):
        ids.append(int(eos_token_id))
    return ids


@dataclass
class TokenizerOps:
    """The tokenizer calls the check needs, behind the engine's tokenizer lock."""

    render: Callable[[list[dict[str, str]]], list[int]]     # chat template + encode, as the engine does
    encode: Callable[[str], list[int]]                     # plain text, no special tokens
    eos_token_id: int | None

    @classmethod
    def of(cls, engine: Any, identity: Any) -> "TokenizerOps | None":
        """The engine's tokenizer, if it is still the one of the model that served `identity`
        (after a hot swap it may not be: then every id is stored, which is always correct)."""
        if engine is None or engine.identity != identity:
            return None
        return cls(render=engine.render_prompt, encode=engine.encode_text,
                   eos_token_id=engine.loaded.tokenizer.eos_token_id)


@dataclass
class ChoiceTokens:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str


class RequestProofs:
    """The proofs of one request's choices, built from the engine's hidden_sink calls.

    The first rows a choice receives are its prompt's (the prefill), so the prompt length comes
    from them: a hot swap that re-tokenizes the request at admission is then handled too."""

    def __init__(self, chunk_tokens: int = CHUNK_TOKENS, top_k: int = TOP_K):
        self.chunk_tokens = chunk_tokens
        self.top_k = top_k
        self._builders: dict[int, ProofBuilder | None] = {}    # None: that choice's proof was dropped

    def sink(self, index: int, rows: Any) -> None:
        """engine hidden_sink(choice_index, rows [k, hidden]), on the scheduler thread. The builder
        only selects each chunk's top-k as its rows complete (about 0.1 ms per 32 tokens), so a
        request holds at most one chunk of rows; the polynomial encoding, the costlier part, runs
        in `PendingProofs.finish()` in the trace writer's thread, once the reply is out."""
        if index not in self._builders:
            try:
                self._builders[index] = ProofBuilder(int(rows.shape[-2]), chunk_tokens=self.chunk_tokens,
                                                     top_k=self.top_k)
            except ProofError:
                self._builders[index] = None
        builder = self._builders[index]
        if builder is None:
            return
        try:
            builder.add_hidden(rows)
        except (ProofError, ValueError, RuntimeError) as exc:   # costs this proof, never the reply
            log.warning("activation proof of choice %d dropped (%s)", index, exc.__class__.__name__)
            self._builders[index] = None

    def builder(self, index: int) -> ProofBuilder | None:
        """The proof builder of choice `index`; None when it got no rows or they cannot make a proof."""
        return self._builders.get(index)

    @property
    def seconds(self) -> float:
        """Time spent in the builders so far (top-k on the scheduler thread, encoding in the writer's)."""
        return sum(builder.seconds for builder in self._builders.values() if builder is not None)

    def pending(self, result: Any, tokenizer: TokenizerOps | None) -> "PendingProofs":
        """What the trace writer finishes later, from an engine GenerationResult."""
        choices = [ChoiceTokens(c.index, list(c.token_ids), c.text, c.finish_reason) for c in result.choices]
        return PendingProofs(self, list(result.prompt_ids), choices, tokenizer)


@dataclass
class PendingProofs:
    proofs: RequestProofs
    prompt_ids: list[int]
    choices: list[ChoiceTokens]
    tokenizer: TokenizerOps | None
    seconds: float = 0.0            # time finish() took (the writer thread's share of the cost)

    def finish(self, messages: Sequence[dict[str, str]]) -> list[dict[str, Any]] | None:
        """The proof entries for a trace whose prompt is `messages` (as stored, before redaction);
        None when no choice has a proof."""
        started = time.perf_counter()
        try:
            return self._finish(list(messages))
        finally:
            self.seconds += time.perf_counter() - started

    def _finish(self, messages: list[dict[str, str]]) -> list[dict[str, Any]] | None:
        tokenizer = self.tokenizer
        prompt_matches = False
        if tokenizer is not None:
            try:
                prompt_matches = tokenizer.render(messages) == self.prompt_ids
            except Exception:           # the template refuses the stored messages: keep the ids
                prompt_matches = False
        entries = []
        for choice in self.choices:
            builder = self.proofs.builder(choice.index)
            if builder is None:
                continue
            try:
                proof = builder.finish()
            except ProofError:
                continue
            total = len(self.prompt_ids) + len(choice.token_ids)
            if proof.prompt_len != len(self.prompt_ids) or proof.positions not in (total - 1, total):
                log.warning("activation proof of choice %d dropped (it covers %d positions of %d)",
                            choice.index, proof.positions, total)
                continue
            entry: dict[str, Any] = {**proof.to_dict(), "choice_index": choice.index}
            if not prompt_matches:
                entry["prompt_ids"] = list(self.prompt_ids)
            if tokenizer is None or reencoded_reply_ids(
                    tokenizer.encode, tokenizer.eos_token_id, choice.text, choice.finish_reason,
                    proof.prompt_len, proof.positions) != choice.token_ids:
                entry["reply_ids"] = list(choice.token_ids)
            entries.append(entry)
        return entries or None
