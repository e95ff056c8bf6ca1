"""Model swaps inside the engine (in-process, tiny-random): overlap and hold draining, timing, priority."""

from __future__ import annotations

import time

import pytest

from inference.config import LimitsConfig
from inference.engine import GenerationEngine
from inference.engine_types import GenerationRequest, SamplingParams, TextDelta


@pytest.fixture()
def engine(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, LimitsConfig(max_tokens_cap=1024)).start()
    yield engine
    engine.stop()


def chat(text: str, **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params))


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def start_decoding(engine, max_tokens: int, count: int = 2):
    handles = [engine.submit(chat(f"old {i}", max_tokens=max_tokens, seed=i)) for i in range(count)]
    for handle in handles:
        next(event for event in handle.events() if isinstance(event, TextDelta))  # its rows are decoding
    return handles


def test_overlap_swap_admits_new_requests_while_old_rows_finish_on_old_weights(engine, tiny_loaded,
                                                                              other_tiny_loaded):
    old = start_decoding(engine, max_tokens=400)
    future = engine.swap(other_tiny_loaded)  # overlap is the default
    assert future.result(60) == other_tiny_loaded.identity
    new = engine.submit(chat("new", max_tokens=3, seed=1))
    new_result = new.result(60)
    # the short new request ran on the new weights and finished while the long old ones still decoded
    assert new_result.identity == other_tiny_loaded.identity
    assert not any(handle.done for handle in old)
    assert engine.active_rows == len(old)
    for handle in old:
        result = handle.result(120)
        assert result.identity == tiny_loaded.identity
        assert len(result.choices[0].token_ids) == 400  # every old row ran to the end on the old model
    timing = engine.last_swap
    assert timing.overlap and timing.rows_in_flight == len(old)
    assert timing.applied_at >= timing.requested_at
    assert timing.first_step_at is not None and timing.first_step_at >= timing.applied_at
    wait_until(lambda: timing.drained_at is not None)  # noted by the scheduler just after the last result
    assert timing.drained_at > new_result.finished_at
    assert engine.active_rows == 0


def test_hold_swap_waits_for_in_flight_rows_before_admitting(engine, tiny_loaded, other_tiny_loaded):
    old = start_decoding(engine, max_tokens=60)
    future = engine.swap(other_tiny_loaded, overlap=False)
    new = engine.submit(chat("new", max_tokens=3, seed=1))
    assert future.result(60) == other_tiny_loaded.identity
    new_result = new.result(60)
    old_results = [handle.result(60) for handle in old]
    assert all(result.identity == tiny_loaded.identity for result in old_results)
    assert new_result.identity == other_tiny_loaded.identity
    # admission was held: the new request's first token came after every old row had finished
    assert new_result.first_token_at > max(result.finished_at for result in old_results)
    timing = engine.last_swap
    assert not timing.overlap and timing.rows_in_flight == 0
    assert timing.applied_at >= max(result.finished_at for result in old_results)


def test_a_second_swap_waits_until_the_first_old_model_has_drained(engine, tiny_loaded, other_tiny_loaded):
    old = start_decoding(engine, max_tokens=150, count=1)
    assert engine.swap(other_tiny_loaded).result(60) == other_tiny_loaded.identity
    middle = start_decoding(engine, max_tokens=300, count=1)
    # swapping back while both models decode: applied once the first has drained (never three models)
    back = engine.swap(tiny_loaded)
    assert back.result(120) == tiny_loaded.identity
    assert old[0].result(60).identity == tiny_loaded.identity
    assert middle[0].result(60).identity == other_tiny_loaded.identity
    assert engine.last_swap.applied_at >= old[0].result().finished_at
    again = engine.submit(chat("again", max_tokens=2))
    assert again.result(60).identity == tiny_loaded.identity
    assert engine.stats.swaps == 2


def test_front_requests_jump_the_queue_and_the_full_batch(tiny_loaded):
    limits = LimitsConfig(max_batch_size=1, max_n=1, queue_size=1, max_tokens_cap=1024)
    engine = GenerationEngine(tiny_loaded, limits).start()
    try:
        busy = start_decoding(engine, max_tokens=600, count=1)[0]  # the only row is taken
        waiting = engine.submit(chat("waiting", max_tokens=2))
        urgent = engine.submit(chat("health", max_tokens=2), front=True)  # past the full queue, too
        urgent_result = urgent.result(60)
        assert not busy.done and not waiting.done  # it ran next to the busy row, ahead of the queue
        assert engine.stats.max_rows_in_step == 2
        waiting_result = waiting.result(60)
        assert waiting_result.first_token_at > busy.result(60).finished_at > urgent_result.finished_at
    finally:
        engine.stop()
