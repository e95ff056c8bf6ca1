"""The loop's workload: real users' prompts and checkable tasks sent to the nodes, plus the
feedback a user would give.

Chat prompts are the opening turns of real conversations (chitchat-dataset). Tasks come from
traces.tasks (train split only: the held-out evaluation uses the eval split, which never
overlaps). Task requests ask for n > 1 samples and carry their answer in `metadata`, so the node
stores it with the trace and its verifier judges can later turn the samples into preference pairs.
The simulated user checks each sample with the same verifier and tells the node which one was
right (a `choice` feedback) or that the reply was wrong (thumbs down), as a person would; when
no sample was right, a share of users (`task_correction_rate`) edit the reply into the answer
instead (a `correction`, the strongest signal a user gives). On a share of chat replies
(`chat_correction_rate`) the user edits the reply into what the real person of that conversation
answered (a `correction` feedback, as in Open WebUI's edit): real human text, which the node's
privacy filter redacts like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from traces.judges import score
from traces.tasks import KINDS, generate_tasks, task_metadata


class WorkloadSettings(BaseModel):
    """[workload] of the loop config."""

    model_config = ConfigDict(extra="forbid")
    chat_per_node: int = Field(12, ge=0)          # chitchat prompts per node and iteration
    tasks_per_node: int = Field(48, ge=0)         # checkable tasks per node and iteration
    samples_per_task: int = Field(4, ge=1)        # n: samples a task request asks for
    task_kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    non_iid: bool = True                          # each node leans towards different task kinds
    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    chat_max_tokens: int = Field(64, ge=1)
    task_max_tokens: int = Field(32, ge=1)
    concurrency: int = Field(4, ge=1)             # requests in flight per node
    feedback: bool = True                         # simulated users say which sample was right
    chat_thumbs_up_rate: float = Field(0.0, ge=0, le=1)
    chat_correction_rate: float = Field(0.0, ge=0, le=1)   # chat replies the user edits into the real answer
    task_correction_rate: float = Field(0.0, ge=0, le=1)   # tasks with no right sample the user edits into the answer
    seed: int = 0
    request_timeout_s: float = Field(300.0, gt=0)


@dataclass
class WorkItem:
    kind: Literal["chat", "task"]
    messages: list[dict[str, str]]
    task: dict[str, Any] | None = None
    human_reply: str | None = None            # chat: what the real person answered (for corrections)


@dataclass
class NodeWorkloadResult:
    node: str
    requests: int = 0
    failed: int = 0
    completions: int = 0
    completion_tokens: int = 0
    task_samples: int = 0
    task_samples_correct: int = 0
    tasks_with_a_correct_sample: int = 0
    feedback_sent: int = 0
    chat_corrections: int = 0
    task_corrections: int = 0
    feedback_failed: int = 0
    seconds: float = 0.0
    versions_seen: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _stable_fraction(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def chat_prompts(count: int, *, seed: int, held_out_share: float = 0.2) -> list[tuple[str, str]]:
    """(opening turn, the real reply to it) of real conversations, excluding the share kept for
    held-out evaluation."""
    from traces.samples import chitchat_conversations

    opening = [(turns[0], turns[1]) for turns in chitchat_conversations()
               if _stable_fraction(turns[0]) >= held_out_share and 8 <= len(turns[0]) <= 400]
    random.Random(seed).shuffle(opening)
    return opening[:count]


def held_out_conversations(count: int, *, held_out_share: float = 0.2) -> list[list[dict[str, str]]]:
    """Whole real conversations the workload never sends, as user/assistant turns (for chat loss)."""
    from traces.samples import chitchat_conversations

    rows = []
    for turns in chitchat_conversations():
        if _stable_fraction(turns[0]) < held_out_share and len(turns) >= 2:
            turns = list(turns[: len(turns) - (len(turns) % 2)])[:6]
            rows.append([{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)])
        if len(rows) >= count:
            break
    return rows


def node_task_kinds(kinds: list[str], node_index: int, non_iid: bool) -> list[str]:
    """Non-IID split: node i draws twice as often from kind i (mod the kinds)."""
    if not non_iid or len(kinds) < 2:
        return list(kinds)
    favourite = kinds[node_index % len(kinds)]
    return list(kinds) + [favourite]


def build_items(settings: WorkloadSettings, *, node_index: int, iteration: int) -> list[WorkItem]:
    seed = settings.seed * 1000 + iteration * 100 + node_index
    chats = chat_prompts(settings.chat_per_node, seed=seed)
    tasks = generate_tasks(settings.tasks_per_node, seed=seed, split="train",
                           kinds=node_task_kinds(settings.task_kinds, node_index, settings.non_iid), unique=True)
    items = [WorkItem("chat", [{"role": "user", "content": text}], human_reply=reply) for text, reply in chats]
    items += [WorkItem("task", list(task["messages"]), task) for task in tasks]
    random.Random(seed).shuffle(items)
    return items


async def _send_feedback(http: httpx.AsyncClient, base_url: str, body: dict[str, Any], result: NodeWorkloadResult) -> None:
    try:
        response = await http.post(f"{base_url}/v1/feedback", json=body)
        if response.status_code == 200:
            result.feedback_sent += 1
        else:
            result.feedback_failed += 1
            result.errors.append(f"feedback {response.status_code}: {response.text[:120]}")
    except httpx.HTTPError as exc:
        result.feedback_failed += 1
        result.errors.append(f"feedback: {exc.__class__.__name__}")


async def _run_item(item: WorkItem, client: Any, http: httpx.AsyncClient, base_url: str, model: str,
                    settings: WorkloadSettings, result: NodeWorkloadResult) -> None:
    is_task = item.kind == "task"
    kwargs: dict[str, Any] = dict(
        model=model, messages=item.messages, temperature=settings.temperature, top_p=settings.top_p,
        n=settings.samples_per_task if is_task else 1,
        max_tokens=settings.task_max_tokens if is_task else settings.chat_max_tokens,
    )
    if is_task:
        kwargs["metadata"] = task_metadata(item.task)
    result.requests += 1
    try:
        response = await client.chat.completions.create(**kwargs)
    except Exception as exc:  # the openai client raises many types; each is one failed request
        result.failed += 1
        result.errors.append(f"{item.kind}: {exc.__class__.__name__}: {str(exc)[:120]}")
        return
    # The node's fingerprint is "swarmloop-<version>-<sha prefix>": the version that served it.
    fingerprint = getattr(response, "system_fingerprint", None) or ""
    version = fingerprint.split("-")[1] if fingerprint.count("-") >= 2 else "?"
    result.versions_seen[version] = result.versions_seen.get(version, 0) + 1
    result.completions += len(response.choices)
    result.completion_tokens += response.usage.completion_tokens if response.usage else 0
    if not is_task:
        if not settings.feedback:
            return
        if item.human_reply and _stable_fraction(response.id + "/edit") < settings.chat_correction_rate:
            await _send_feedback(http, base_url, {"completion_id": response.id, "correction": item.human_reply,
                                                  "choice_index": 0}, result)
            result.chat_corrections += 1
        elif settings.chat_thumbs_up_rate and _stable_fraction(response.id) < settings.chat_thumbs_up_rate:
            await _send_feedback(http, base_url, {"completion_id": response.id, "thumbs": 1}, result)
        return
    correct = [score(choice.message.content or "", item.task) >= 1.0 for choice in response.choices]
    result.task_samples += len(correct)
    result.task_samples_correct += sum(correct)
    result.tasks_with_a_correct_sample += any(correct)
    if not settings.feedback:
        return
    if any(correct):
        body = {"completion_id": response.id, "choice": correct.index(True)}
    elif _stable_fraction(response.id + "/edit") < settings.task_correction_rate:
        body = {"completion_id": response.id, "correction": corrected_answer(item.task), "choice_index": 0}
        result.task_corrections += 1
    else:
        body = {"completion_id": response.id, "thumbs": -1, "choice_index": 0}
    await _send_feedback(http, base_url, body, result)


def corrected_answer(task: dict[str, Any]) -> str:
    """What a user who knows the answer edits a wrong reply into: the answer as the prompt asks
    for it (a multiple-choice letter with its option, as people write it)."""
    answer = str(task["answer"])
    options = task.get("options")
    if options and len(answer) == 1 and answer.isalpha():
        return f"{answer}) {options[ord(answer.upper()) - 65]}"
    return answer


async def drive_node(name: str, base_url: str, model: str, items: list[WorkItem], settings: WorkloadSettings,
                     on_done: Any = None) -> NodeWorkloadResult:
    """Send `items` to one node with `settings.concurrency` requests in flight."""
    from openai import AsyncOpenAI

    result = NodeWorkloadResult(node=name)
    started = time.monotonic()
    semaphore = asyncio.Semaphore(settings.concurrency)
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="swarmloop", max_retries=2,
                         timeout=settings.request_timeout_s)
    async with httpx.AsyncClient(timeout=30.0) as http:
        async def one(item: WorkItem) -> None:
            async with semaphore:
                await _run_item(item, client, http, base_url, model, settings, result)
            if on_done is not None:
                on_done()

        await asyncio.gather(*(one(item) for item in items))
    await client.close()
    result.seconds = time.monotonic() - started
    return result
