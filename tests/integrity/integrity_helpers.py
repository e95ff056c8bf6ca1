"""Shared by tests/integrity and bench/bench_integrity.py: real prompts, a fine-tuned stand-in for
v1, and the tamperings a dishonest node could try."""

from __future__ import annotations

import copy
import random
from typing import Any

TUNE_TEXTS = [
    "I just got back from a long hike in the mountains and my legs are killing me.",
    "Do you think it is worth learning to play the piano as an adult? I always wanted to.",
    "My cat knocked a glass off the table again this morning, she does it on purpose.",
    "We are planning a trip to Portugal next spring, any places you would recommend?",
]


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):               # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def chitchat_conversations(n: int, seed: int = 0, max_turns: int = 5) -> list[list[dict[str, str]]]:
    """`n` real chat prompts from chitchat-dataset: the first 1, 3 or 5 turns of a conversation
    (alternating user / assistant, ending on the user), each turn its speaker's messages joined."""
    import chitchat_dataset

    conversations = list(chitchat_dataset.Dataset().values())
    rng = random.Random(seed)
    rng.shuffle(conversations)
    prompts = []
    for conversation in conversations:
        turns = [" ".join(m["text"] for m in turn).strip() for turn in conversation["messages"]]
        turns = [t for t in turns if t]
        usable = min(len(turns), max_turns)
        if usable < 1:
            continue
        count = rng.choice([k for k in (1, 3, 5) if k <= usable])
        prompts.append([
            {"role": "user" if i % 2 == 0 else "assistant", "content": text[:600]}
            for i, text in enumerate(turns[:count])
        ])
        if len(prompts) == n:
            break
    return prompts


def make_finetuned_copy(model, tokenizer, *, steps: int = 3, lr: float = 1e-4, rank: int = 8, seed: int = 0):
    """A deep copy of `model` after a few real LoRA SFT steps (all linear layers), merged: the
    smallest honest-looking "v1" a node could claim is the current checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tuned = copy.deepcopy(model).float()
    tuned.train()
    peft_model = get_peft_model(tuned, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        text = TUNE_TEXTS[step % len(TUNE_TEXTS)]
        ids = torch.tensor([chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])])
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def weight_delta(a, b) -> float:
    """Relative L2 distance between two models' parameters."""
    import torch

    num = den = 0.0
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters()):
            num += float(torch.sum((pa.float() - pb.float()) ** 2))
            den += float(torch.sum(pa.float() ** 2))
    return (num / den) ** 0.5


def alter_one_token(ids: list[int], position: int, vocab_size: int, rng: random.Random) -> list[int]:
    out = list(ids)
    replacement = out[position]
    while replacement == out[position]:
        replacement = rng.randrange(vocab_size)
    out[position] = replacement
    return out


def altered_prompt(tokenizer, messages: list[dict[str, str]], rng: random.Random) -> list[int]:
    """The same conversation with one word of the last user message changed (what a node would do
    to pass off a reply as the answer to another question)."""
    changed: list[dict[str, Any]] = [dict(m) for m in messages]
    words = changed[-1]["content"].split(" ")
    i = rng.randrange(len(words))
    words[i] = rng.choice(["banana", "never", "Tuesday", "quantum", "sorry", "42"]) if words[i] else "hm"
    changed[-1]["content"] = " ".join(words)
    return chat_prompt_ids(tokenizer, changed)
