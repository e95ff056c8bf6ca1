"""Real conversations as traces: the chitchat-dataset (7,168 human-human chats, MIT) turned into
what a node would store, for tests, benchmarks and the loop's workload.

Each conversation becomes one trace: the speakers alternate user / assistant, the last assistant
turn is the completion and everything before it is the prompt. A conversation with one speaker
becomes its first message as the prompt and the rest as the reply; single messages are skipped.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from functools import lru_cache
from typing import Any, Iterator

from traces.schemas import Choice, Message, ModelInfo, Trace, Usage

SAMPLE_MODEL = ModelInfo(ref="embedded:smollm2-135m-instruct", version="v0000",
                         weights_sha256="5d1c8b2e" * 8)


@lru_cache(maxsize=1)
def chitchat_conversations() -> tuple[tuple[str, ...], ...]:
    """Every conversation as a tuple of turns (each turn: one speaker's messages joined)."""
    import chitchat_dataset

    conversations = []
    data = chitchat_dataset.Dataset()
    for key in sorted(data):
        turns = tuple("\n".join(m["text"] for m in turn) for turn in data[key]["messages"])
        if len(turns) == 1:
            # One speaker only: the first message is the prompt, the rest the reply.
            texts = [m["text"] for m in data[key]["messages"][0]]
            turns = (texts[0], "\n".join(texts[1:])) if len(texts) >= 2 else ()
        if len(turns) >= 2:
            conversations.append(turns)
    return tuple(conversations)


def conversation_to_trace(turns: tuple[str, ...] | list[str], *, trace_id: str | None = None,
                          node_id: str = "node-sample", model: ModelInfo = SAMPLE_MODEL,
                          created_at: float = 1_750_000_000.0, consent: str = "local",
                          rng: random.Random | None = None, **extra: Any) -> Trace:
    rng = rng or random.Random(0)
    turns = list(turns)
    if len(turns) % 2:            # end on an assistant turn
        turns = turns[:-1]
    messages = [Message(role="user" if i % 2 == 0 else "assistant", content=text)
                for i, text in enumerate(turns[:-1])]
    reply = turns[-1]
    return Trace(
        id=trace_id or f"chatcmpl-{uuid.UUID(int=rng.getrandbits(128)).hex}",
        node_id=node_id, model=model, created_at=created_at, messages=messages,
        choices=[Choice(index=0, text=reply, finish_reason="stop", completion_tokens=len(reply) // 4)],
        sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 256, "n": 1},
        usage=Usage(prompt_tokens=sum(len(m.content) for m in messages) // 4, completion_tokens=len(reply) // 4),
        latency_s=round(rng.uniform(0.2, 3.0), 3), ttft_s=round(rng.uniform(0.02, 0.3), 3),
        consent=consent, **extra)


def chitchat_traces(n: int | None = None, seed: int = 0, start_time: float | None = None,
                    **kwargs: Any) -> Iterator[Trace]:
    """`n` traces (default: one per conversation), in a seeded order, one second apart, the last
    one about now (unless `start_time` is given)."""
    conversations = list(chitchat_conversations())
    rng = random.Random(seed)
    rng.shuffle(conversations)
    count = len(conversations) if n is None else n
    if start_time is None:
        start_time = float(int(time.time()) - count)
    for i in range(count):
        yield conversation_to_trace(conversations[i % len(conversations)], rng=rng,
                                    created_at=start_time + i + rng.random(), **kwargs)


def _chat_json_bytes(turns: tuple[str, ...] | list[str]) -> int:
    return len(json.dumps([{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                           for i, text in enumerate(turns)]).encode())


def chitchat_excerpts(n: int | None = None, seed: int = 0, target_bytes: int = 580,
                      per_conversation: int = 3) -> list[tuple[str, ...]]:
    """Chitchat-sized exchanges: runs of whole turns (user first, a reply last) cut from the
    conversations, each the shortest run from a random user turn that reaches `target_bytes` of
    chat JSON ([{"role", "content"}, ...]), growing forwards, then backwards at a conversation's end;
    up to `per_conversation` different runs per conversation (short ones stay whole, once).
    With the defaults: about 9,700 excerpts, median 662 B of chat JSON (mean 663 B), 6 turns."""
    rng = random.Random(seed)
    conversations = list(chitchat_conversations())
    rng.shuffle(conversations)
    out: list[tuple[str, ...]] = []
    for turns in conversations:
        pairs = len(turns) // 2
        taken: set[tuple[int, int]] = set()
        for _ in range(per_conversation):
            start = rng.randrange(pairs) * 2
            end = start + 2
            while _chat_json_bytes(turns[start:end]) < target_bytes:
                if end + 2 <= 2 * pairs:
                    end += 2
                elif start >= 2:
                    start -= 2
                else:
                    break
            if (start, end) in taken:          # the same excerpt twice would only test dedup
                continue
            taken.add((start, end))
            out.append(tuple(turns[start:end]))
            if n is not None and len(out) >= n:
                return out
    return out
