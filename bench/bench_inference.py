"""Inference benchmark on the embedded model: the node against plain transformers, one invocation.

    .venv/bin/python bench/bench_inference.py [--tokens 64] [--concurrency 8] [--threads 0] [--dtype DTYPE]

(a) one streamed request through a real node (`swarmloop node serve` in its own process, called
    with the openai client, greedy) vs a plain `model.generate` loop on the same weights in this
    process, run before the node starts: tokens/s and their ratio (target >= 0.9);
(b) aggregate tokens/s of N concurrent requests vs the same N sent one after another (>= 2.5x);
(c) time to first token, p50/p95, for requests sent alone and for the concurrent ones;
(d) plain-generate tokens/s in float32 vs bfloat16 (one sequence, and 8 left-padded rows) and
    their greedy answers side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "embedded:smollm2-135m-instruct"
PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, in detail.",
    "Describe a walk through a forest in autumn.",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue to a child.",
    "Describe the city of Paris for a travel guide.",
    "Write a poem about the ocean at night.",
    "Explain how bread is made, step by step.",
]
SENSE_PROMPTS = ["What is the capital of France?", "What is 2 + 2?", "Name three colours."]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def plain_generate(loaded, prompt: str, tokens: int) -> tuple[int, float, str]:
    import torch

    tokenizer = loaded.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        start = time.perf_counter()
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id)
        elapsed = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    return int(new.shape[0]), elapsed, tokenizer.decode(new, skip_special_tokens=True)


async def timed_stream(client, prompt: str, tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds to first content, total seconds) of one streamed greedy request."""
    start = time.perf_counter()
    first = None
    usage = 0
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=tokens, temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return usage, first or 0.0, time.perf_counter() - start


def plain_generate_batch(loaded, prompts: list[str], tokens: int) -> tuple[int, float]:
    """(new tokens, seconds) of one left-padded model.generate over all prompts, greedy."""
    import torch

    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.inference_mode():
        start = time.perf_counter()
        out = loaded.model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        elapsed = time.perf_counter() - start
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in the concurrent run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each single-request measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both processes (0 = torch default)")
    parser.add_argument("--dtype", default=None, help="dtype for (a)-(c); default: the one in configs/node.toml")
    args = parser.parse_args()

    import openai
    import torch

    from inference.config import NodeConfig
    from inference.loading import load_model
    from swarmloop.configfile import load_config
    from tests.node_process import start_node

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parent.parent
    dtype = args.dtype or load_config(root / "configs" / "node.toml", NodeConfig).model.dtype
    print(f"# bench_inference: {MODEL}, {args.tokens} new tokens, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cpus, dtype for the node {dtype}")

    # (d) plain generate, float32 vs bfloat16, interleaved so that load changes hit both alike
    models = {candidate: load_model(MODEL, candidate) for candidate in ("float32", "bfloat16")}
    samples: dict[str, list[float]] = {name: [] for name in models}
    for loaded in models.values():
        plain_generate(loaded, PROMPTS[0], 4)  # warm-up
    for _ in range(args.repeats):
        for name, loaded in models.items():
            n, elapsed, _ = plain_generate(loaded, PROMPTS[0], args.tokens)
            samples[name].append(n / elapsed)
    rates = {name: statistics.median(values) for name, values in samples.items()}
    for name, loaded in models.items():
        answers = [plain_generate(loaded, p, 24)[2].strip().replace("\n", " ")[:60] for p in SENSE_PROMPTS]
        print(f"(d) plain generate {name:8s}: {rates[name]:6.1f} tok/s (median of {args.repeats})  greedy answers: {answers}")
    print(f"(d) one sequence: bfloat16 / float32 = {rates['bfloat16'] / rates['float32']:.2f}x")
    batched = {}
    for name, loaded in models.items():  # what a node does under load: 8 left-padded rows at once
        n, elapsed = plain_generate_batch(loaded, PROMPTS[:8], args.tokens // 2)
        batched[name] = n / elapsed
        print(f"(d) plain generate, 8 rows {name:8s}: {batched[name]:6.1f} tok/s (prefill included)")
    print(f"(d) 8 rows: bfloat16 / float32 = {batched['bfloat16'] / batched['float32']:.2f}x")
    plain = rates[dtype]
    del models

    # (a)-(c) through a real node: `swarmloop node serve` in its own process, called with openai
    node = start_node(MODEL, config={"model": {"dtype": dtype, "threads": args.threads}},
                      limits={"max_batch_size": max(8, args.concurrency), "max_n": 8, "queue_size": 64,
                              "max_tokens_cap": max(1024, args.tokens)})
    try:
        async def run(prompts: list[str], together: bool):
            async with openai.AsyncOpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0,
                                          timeout=3600) as client:
                if together:
                    return await asyncio.gather(*(timed_stream(client, p, args.tokens) for p in prompts))
                return [await timed_stream(client, p, args.tokens) for p in prompts]

        asyncio.run(run([PROMPTS[0]], False))  # warm-up
        single = asyncio.run(run([PROMPTS[0]] * args.repeats, False))
        served = statistics.median(n / total for n, _, total in single)
        print(f"(a) one request, {dtype}: plain generate {plain:6.1f} tok/s, through the node {served:6.1f} tok/s, "
              f"ratio {served / plain:.2f} (target >= 0.9)")

        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.concurrency)]
        start = time.perf_counter()
        one_by_one = asyncio.run(run(prompts, False))
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        together = asyncio.run(run(prompts, True))
        concurrent_s = time.perf_counter() - start
        seq_rate = sum(r[0] for r in one_by_one) / sequential_s
        con_rate = sum(r[0] for r in together) / concurrent_s
        steps = node.metric("swarmloop_batch_size_count")
        single_row = node.metric("swarmloop_batch_size_bucket", 'le="1.0"')
        print(f"(b) {args.concurrency} requests: one after another {seq_rate:6.1f} tok/s, all at once "
              f"{con_rate:6.1f} tok/s, ratio {con_rate / seq_rate:.2f}x (target >= 2.5x); "
              f"{steps - single_row:.0f} of {steps:.0f} decode steps had more than one row")
        alone = [r[1] for r in one_by_one + single]
        crowded = [r[1] for r in together]
        print(f"(c) time to first token: alone p50 {percentile(alone, .5) * 1000:.0f} ms, p95 "
              f"{percentile(alone, .95) * 1000:.0f} ms (n={len(alone)}); {args.concurrency} at once p50 "
              f"{percentile(crowded, .5) * 1000:.0f} ms, p95 {percentile(crowded, .95) * 1000:.0f} ms")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
