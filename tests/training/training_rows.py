"""Small datasets in TRL conversational formats, shared by the training tests."""

from __future__ import annotations


def sft_rows(n: int = 8) -> list[dict]:
    replies = ["Hello there, friend!", "Hi! How can I help?"]
    return [
        {"messages": [{"role": "user", "content": f"Say hello number {i}."},
                      {"role": "assistant", "content": replies[i % 2]}],
         "node_id": f"node-{i % 2}"}
        for i in range(n)
    ]


def dpo_rows(n: int = 8) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
         "chosen": [{"role": "assistant", "content": f"{2 * i}."}],
         "rejected": [{"role": "assistant", "content": "I like bananas and long answers."}]}
        for i in range(n)
    ]


def kto_rows(n: int = 8) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
         "completion": [{"role": "assistant", "content": f"{2 * i}." if i % 2 == 0 else "Bananas."}],
         "label": i % 2 == 0}
        for i in range(n)
    ]
