"""Capture overhead through the real server: consent local vs off, one run.

    .venv/bin/python bench/bench_traces_capture.py [--model tiny-random] [--requests 200] [--tokens 16]

Starts three nodes on loopback (`swarmloop node serve`, same model, one torch thread each): two
with consent off (no hook at all; their difference is the noise floor between two processes) and
one with consent local (capture hook, privacy filter, store). Sends the same chat completions with
the official openai client, rotating between the nodes so that machine noise hits all alike, and
compares end-to-end latency. Prompts are real
chitchat turns, some with PII. tiny-random makes a completion take milliseconds, so whatever
capture costs on the request path shows; the embedded model hides it further. Target: p50 ratio
local/off <= 1.02.

`--proofs off` turns the local node's activation proofs off ([integrity] proofs, on by default):
with them on, the local node also pays the proof's extra decode step per reply (issue 7's cost,
about 1/max_tokens of a completion), which a consent-off node never builds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.node_process import start_node  # noqa: E402
from traces.samples import chitchat_traces  # noqa: E402
from traces.store import TraceStore  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=200, help="per node, after 10 warm-up requests")
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens per completion")
    parser.add_argument("--proofs", choices=["on", "off"], default="on",
                        help="activation proofs on the consent-local node (the node default is on)")
    args = parser.parse_args()
    prompts = [t.messages[-1].content[:400] for t in chitchat_traces(args.requests + 10, seed=5)]
    prompts[::7] = [f"{p} -- reach me at someone{i}@example.com or +1 415 555 01{i % 100:02d}"
                    for i, p in enumerate(prompts[::7])]
    work = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    limits = {"max_tokens_cap": args.tokens}
    with start_node(args.model, consent="off", workdir=work / "off", limits=limits) as off, \
            start_node(args.model, consent="off", workdir=work / "off2", limits=limits) as off2, \
            start_node(args.model, consent="local", store=work / "local.db", workdir=work / "local", limits=limits,
                       config={"integrity": {"proofs": args.proofs == "on"}}) as local:
        clients = {"off": (off, off.client()), "off2": (off2, off2.client()), "local": (local, local.client())}
        latencies: dict[str, list[float]] = {name: [] for name in clients}
        ids = []
        rotations = [("off", "local", "off2"), ("local", "off2", "off"), ("off2", "off", "local")]
        for i, prompt in enumerate(prompts):
            for name in rotations[i % 3]:
                node, client = clients[name]
                start = time.perf_counter()
                reply = client.chat.completions.create(model=node.model, messages=[{"role": "user", "content": prompt}],
                                                       max_tokens=args.tokens, temperature=0.0)
                elapsed = time.perf_counter() - start
                if i >= 10:
                    latencies[name].append(elapsed)
                if name == "local":
                    ids.append(reply.id)
        local.stop()
    with TraceStore(work / "local.db", readonly=True) as store:
        stored = sum(store.get_trace(i) is not None for i in ids)
    print(f"model {args.model}, {args.requests} requests per node (+10 warm-up), max_tokens {args.tokens}, "
          f"three nodes in rotation (a second consent-off node measures the noise between two processes), "
          f"activation proofs {args.proofs} on the local node")
    for name in ("off", "off2", "local"):
        values = latencies[name]
        print(f"  consent {name:5s}  p50 {percentile(values, 0.5)*1e3:7.2f} ms   p90 {percentile(values, 0.9)*1e3:7.2f} ms"
              f"   mean {statistics.mean(values)*1e3:7.2f} ms")
    off_p50 = statistics.median([percentile(latencies["off"], 0.5), percentile(latencies["off2"], 0.5)])
    ratio = percentile(latencies["local"], 0.5) / off_p50
    noise = percentile(latencies["off2"], 0.5) / percentile(latencies["off"], 0.5)
    print(f"  stored by the local node: {stored}/{len(ids)}")
    print(f"noise between two consent-off nodes (p50 off2/off): {noise:.3f}")
    print(f"ratio p50 local / mean of the two off nodes: {ratio:.3f}  (target <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
