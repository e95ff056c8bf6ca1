"""The generation engine in-process, on the real tiny-random model."""

from __future__ import annotations

import threading

import pytest
import torch

from inference.engine import GenerationEngine
from inference.engine_batch import KVBatch
from inference.engine_sampling import RowSampling, nucleus, sample_row
from inference.engine_text import IncrementalDetokenizer, held_back
from inference.engine_types import (
    ChoiceFinished,
    Completed,
    GenerationRequest,
    QueueFull,
    RequestRejected,
    SamplingParams,
    TextDelta,
)


def chat(text: str, **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params))


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_kv_batch_matches_unbatched_forward_through_merge_and_select(tiny_loaded):
    model = tiny_loaded.model
    a, b = [1, 9690, 198, 2683, 359], [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198, 77, 88]
    with torch.inference_mode():
        batch, logits = KVBatch.prefill(model, [a], pad_id=2)
        assert torch.allclose(logits[0], full_logits(model, a), atol=1e-4)
        for token in (11, 12, 13):
            a = a + [token]
            logits = batch.step(model, [token])
            assert torch.allclose(logits[0], full_logits(model, a), atol=1e-4)
        joined, logits_b = KVBatch.prefill(model, [b], pad_id=2)  # b joins while a is decoding
        batch.merge(joined)
        assert batch.size == 2
        for ta, tb in ((21, 31), (22, 32)):
            a, b = a + [ta], b + [tb]
            logits = batch.step(model, [ta, tb])
            assert torch.allclose(logits[0], full_logits(model, a), atol=1e-4)
            assert torch.allclose(logits[1], full_logits(model, b), atol=1e-4)
        batch.select([1])  # a leaves; the padding columns only it needed are trimmed
        assert batch.length <= len(b)
        b = b + [40]
        logits = batch.step(model, [40])
        assert torch.allclose(logits[0], full_logits(model, b), atol=1e-4)


def test_seeded_request_gives_the_same_tokens_alone_and_in_a_batch(tiny_engine):
    target = chat("Tell me about the sea", max_tokens=24, temperature=1.0, seed=7)
    alone = tiny_engine.generate(target).choices[0].token_ids
    others = [tiny_engine.submit(chat("x " * k, max_tokens=30, temperature=0.8, seed=k)) for k in (1, 5, 20)]
    batched = tiny_engine.generate(chat("Tell me about the sea", max_tokens=24, temperature=1.0, seed=7))
    for handle in others:
        handle.result(60)
    assert batched.choices[0].token_ids == alone
    assert tiny_engine.stats.max_rows_in_step > 1  # it really shared the batch
    different = tiny_engine.generate(chat("Tell me about the sea", max_tokens=24, temperature=1.0, seed=8))
    assert different.choices[0].token_ids != alone


def test_n_choices_are_rows_and_choice_zero_matches_n_equals_one(tiny_engine):
    one = tiny_engine.generate(chat("hello", max_tokens=12, seed=3))
    two = tiny_engine.generate(chat("hello", max_tokens=12, seed=3, n=2))
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].token_ids == one.choices[0].token_ids
    assert two.choices[1].token_ids != two.choices[0].token_ids
    assert two.completion_tokens == sum(len(c.token_ids) for c in two.choices)
    assert two.prompt_tokens == one.prompt_tokens > 0


def test_stream_events_concatenate_to_the_final_text(tiny_engine):
    handle = tiny_engine.submit(chat("stream me", max_tokens=20, seed=11, n=2))
    texts = {0: "", 1: ""}
    finished = {}
    result = None
    for event in handle.events():
        if isinstance(event, TextDelta):
            assert event.index not in finished
            texts[event.index] += event.text
        elif isinstance(event, ChoiceFinished):
            finished[event.index] = event.finish_reason
        elif isinstance(event, Completed):
            result = event.result
    assert result is not None
    assert [texts[c.index] for c in result.choices] == [c.text for c in result.choices]
    assert finished == {0: "length", 1: "length"}
    assert result.time_to_first_token_s is not None and result.latency_s >= result.time_to_first_token_s


def test_stop_string_cuts_the_text_and_finishes_with_stop(tiny_engine):
    free = tiny_engine.generate(chat("words please", max_tokens=40, seed=5)).choices[0]
    text = free.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop) == 3
    cut = tiny_engine.generate(chat("words please", max_tokens=40, seed=5, stop=(stop, "never-in-output-zzz")))
    choice = cut.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == text[: text.find(stop)]
    assert len(choice.token_ids) < len(free.token_ids)


def test_greedy_is_deterministic_without_a_seed(tiny_engine):
    first = tiny_engine.generate(chat("same", max_tokens=10, temperature=0)).choices[0].token_ids
    second = tiny_engine.generate(chat("same", max_tokens=10, temperature=0)).choices[0].token_ids
    assert first == second


def test_cancel_frees_the_rows(tiny_engine):
    handle = tiny_engine.submit(chat("long", max_tokens=64, seed=1))
    for event in handle.events():
        if isinstance(event, TextDelta):
            handle.cancel()
            break
    result = handle.result(30)
    assert result.choices[0].finish_reason == "cancelled"
    assert len(result.choices[0].token_ids) < 64
    assert tiny_engine.active_rows == 0
    assert tiny_engine.stats.rows_cancelled >= 1


def test_limits_are_enforced(tiny_engine):
    with pytest.raises(RequestRejected) as n_error:
        tiny_engine.check(chat("x", n=tiny_engine.limits.max_n + 1))
    assert n_error.value.param == "n"
    with pytest.raises(RequestRejected) as cap_error:
        tiny_engine.check(chat("x", max_tokens=tiny_engine.limits.max_tokens_cap + 1))
    assert cap_error.value.param == "max_tokens"
    with pytest.raises(RequestRejected) as long_error:
        tiny_engine.check(chat("word " * (tiny_engine.limits.max_prompt_tokens + 1)))
    assert long_error.value.code == "context_length_exceeded"


def test_queue_full_is_refused_at_once(tiny_loaded):
    from inference.config import LimitsConfig

    engine = GenerationEngine(tiny_loaded, LimitsConfig(max_batch_size=1, max_n=1, queue_size=2, default_max_tokens=16,
                                                        max_tokens_cap=64)).start()
    try:
        running = engine.submit(chat("a", max_tokens=64))
        next(event for event in running.events() if isinstance(event, TextDelta))  # admitted: holds the only row
        waiting = [engine.submit(chat("b", max_tokens=4)), engine.submit(chat("c", max_tokens=4))]
        with pytest.raises(QueueFull):
            engine.submit(chat("d", max_tokens=4))
        running.cancel()
        assert all(h.result(30).choices[0].finish_reason == "length" for h in waiting)
    finally:
        engine.stop()


def test_hidden_states_match_a_plain_forward(tiny_engine, tiny_loaded):
    result = tiny_engine.generate(GenerationRequest(messages=[{"role": "user", "content": "prove it"}],
                                                    params=SamplingParams(max_tokens=6, seed=2, n=2),
                                                    capture_hidden=True))
    for choice in result.choices:
        hidden = choice.hidden
        assert hidden.prompt.shape == (result.prompt_tokens, tiny_loaded.model.config.hidden_size)
        assert hidden.generated.shape[0] == len(choice.token_ids)
        with torch.inference_mode():
            ids = torch.tensor([result.prompt_ids + choice.token_ids])
            expected = tiny_loaded.model.model(input_ids=ids).last_hidden_state[0]
        assert torch.allclose(torch.cat([hidden.prompt, hidden.generated]), expected, atol=1e-4)


def test_hidden_sink_streams_rows_in_position_order(tiny_engine):
    rows: list[torch.Tensor] = []
    result = tiny_engine.generate(GenerationRequest(messages=[{"role": "user", "content": "sink"}],
                                                    params=SamplingParams(max_tokens=5, seed=4),
                                                    capture_hidden=True,
                                                    hidden_sink=lambda index, states: rows.append(states)))
    assert result.choices[0].hidden is None  # streamed, not kept
    assert sum(r.shape[0] for r in rows) == result.prompt_tokens + len(result.choices[0].token_ids)
    assert rows[0].shape[0] == result.prompt_tokens


def test_reply_goes_out_before_the_proofs_tail_step(tiny_engine):
    """With a hidden sink (the node's proofs), the consumer gets its reply as soon as the last
    token is sampled; done and on_done follow once the tail step fed that token to the sink."""
    gate, tail_reached = threading.Event(), threading.Event()
    received: list[int] = []
    finished: list = []

    def sink(index: int, states: torch.Tensor) -> None:
        received.append(states.shape[0])
        if len(received) == 4:            # prefill, 2 decode steps, then the tail step
            tail_reached.set()
            gate.wait(30)

    request = GenerationRequest(messages=[{"role": "user", "content": "early"}],
                                params=SamplingParams(max_tokens=3, seed=5), capture_hidden=True, hidden_sink=sink)
    handle = tiny_engine.submit(request, stream=False, on_done=lambda h: finished.append(h._final.result))
    reply = next(handle.events())
    assert isinstance(reply, Completed) and len(reply.result.choices[0].token_ids) == 3
    assert tail_reached.wait(30)
    assert handle.replied and not handle.done and finished == []    # the tail step is still held
    gate.set()
    assert handle.result(30) is reply.result
    assert finished == [reply.result]
    assert sum(received) == reply.result.prompt_tokens + 3


def test_stopping_after_an_early_reply_completes_the_request(tiny_loaded):
    """A node stopping between the early reply and the proof's tail step: the consumer already
    has its reply, so the request completes (counted, on_done runs with it) instead of failing."""
    from inference.config import LimitsConfig
    from tests.inference.openai_checks import TEST_LIMITS

    engine = GenerationEngine(tiny_loaded, LimitsConfig(**TEST_LIMITS)).start()
    gate, last_step = threading.Event(), threading.Event()
    calls: list[int] = []
    finished: list = []

    def sink(index: int, states: torch.Tensor) -> None:
        calls.append(states.shape[0])
        if len(calls) == 3:               # prefill, decode 1, decode 2 (samples the last token)
            last_step.set()
            gate.wait(30)

    request = GenerationRequest(messages=[{"role": "user", "content": "stop now"}],
                                params=SamplingParams(max_tokens=3, seed=5), capture_hidden=True, hidden_sink=sink)
    handle = engine.submit(request, stream=False, on_done=lambda h: finished.append(h._final))
    assert last_step.wait(30)
    stopper = threading.Thread(target=engine.stop)
    stopper.start()                       # the scheduler sees it right after this step
    gate.set()
    stopper.join(60)
    reply = next(handle.events())
    assert isinstance(reply, Completed) and len(reply.result.choices[0].token_ids) == 3
    assert len(calls) == 3                # the tail step never ran
    assert handle.result(5) is reply.result
    assert len(finished) == 1 and isinstance(finished[0], Completed)
    assert engine.stats.requests_completed == 1


def test_swap_takes_effect_between_batches(tiny_engine, tiny_loaded, other_tiny_loaded):
    swapped = other_tiny_loaded
    assert swapped.identity.weights_sha256 != tiny_loaded.identity.weights_sha256

    before = tiny_engine.identity
    in_flight = tiny_engine.submit(chat("old weights", max_tokens=40, seed=9))
    next(event for event in in_flight.events() if isinstance(event, TextDelta))  # decoding now
    future = tiny_engine.swap(swapped)
    later = tiny_engine.submit(chat("new weights", max_tokens=4, seed=9))
    assert future.result(60) == swapped.identity
    assert in_flight.result(60).identity == before
    assert len(in_flight.result().choices[0].token_ids) == 40  # finished on the old weights
    assert later.result(60).identity == swapped.identity
    assert tiny_engine.identity == swapped.identity
    assert tiny_engine.stats.swaps == 1


def test_detokenizer_streams_multibyte_characters_whole(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    text = "héllo wörld 日本語のテキスト 🎉🚀 naïve café"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 10
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(token) for token in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert any(delta == "" for delta in deltas)  # some tokens were partial characters and held back


def test_held_back_keeps_possible_stop_prefixes():
    assert held_back("the end is ne", ["near"]) == 2
    assert held_back("abc", ["xyz"]) == 0
    assert held_back("ab", ["abc", "b"]) == 2


def test_top_p_keeps_the_nucleus_only():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert nucleus(probs, 0.7).nonzero().flatten().tolist() == [0, 1]
    assert nucleus(probs, 0.01).nonzero().flatten().tolist() == [0]
    wide = torch.full((5000,), 1 / 5000)  # the nucleus is larger than the first topk probe
    assert int((nucleus(wide, 0.9) > 0).sum()) == 4500


def test_sampler_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    row = RowSampling(temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor([sample_row(probs.log(), row) for _ in range(4000)]), minlength=4)
    assert counts[3] == 0  # a zero-probability token is never drawn
    assert torch.allclose(counts[:3] / 4000, probs[:3], atol=0.03)


def test_concurrent_submitters_from_threads(tiny_engine):
    results = []

    def worker(k: int) -> None:
        results.append(tiny_engine.generate(chat(f"thread {k}", max_tokens=8, seed=k), timeout=60))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert all(len(r.choices[0].token_ids) == 8 for r in results)
