"""Hot-swap benchmark on the embedded model: the serving pause and failed requests during swaps.

    .venv/bin/python bench/bench_hotswap.py [--swaps 3] [--concurrency 6] [--tokens 48] \\
        [--drain overlap,hold] [--threads 1] [--warmup-s 40] [--gap-s 30] [--json OUT]

A real `swarmloop node serve` subprocess (embedded SmolLM2-135M-Instruct) starts on v0001 of a
local folder registry holding v0001..v(swaps+1) (copies of the embedded weights with tiny seeded
noise, published with LocalRegistry). `concurrency` clients stream chat completions back to back
with the openai client the whole time; every `gap-s` seconds the bench POSTs /admin/reload to the
next version. Reported per drain mode (`overlap` is the node's default; `hold`, where new
requests wait until every in-flight row is done, is the baseline):

- node pause: how long the node held admission of new requests during each swap (from its
  /admin/reload answer; also the swarmloop_swap_pause_seconds histogram);
- client stall: the longest stretch in which no stream received a single token, within +-1 s of
  the moment the node switched models, and over the whole reload (sent -> answered + 0.5 s: verify,
  load, both health checks), each against slices of the same length outside any reload;
- time to first token of requests sent during a reload vs outside;
- failed requests (an exception or no finish_reason) inside swap windows and overall;
- verify / load / health seconds of each swap (from /admin/status).
Targets (issue 6): node pause <= 1 s, zero failed requests during a swap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "embedded:smollm2-135m-instruct"
TOKEN = "bench-admin-token"
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


@dataclass
class Request:
    sent: float
    tokens: list[float] = field(default_factory=list)    # arrival time of each content chunk
    finish_reason: str | None = None
    model: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.finish_reason is None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_registry(root: Path, versions: int) -> Path:
    from inference.embedded import ensure_embedded
    from tests.inference.hotswap_checkpoints import publish

    registry = root / "registry"
    source = ensure_embedded()
    for number in range(1, versions + 1):
        started = time.perf_counter()
        publish(registry, root, source, f"v{number}", seed=number, noise=1e-4, promote=number == 1)
        print(f"  published v{number:04d} in {time.perf_counter() - started:.1f} s", flush=True)
    return registry


async def client_loop(client, index: int, tokens: int, stop: asyncio.Event, out: list[Request]) -> None:
    turn = 0
    while not stop.is_set():
        record = Request(sent=time.monotonic())
        out.append(record)
        prompt = PROMPTS[(index + turn) % len(PROMPTS)]
        turn += 1
        try:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
                temperature=0.7, seed=index * 1000 + turn, stream=True)
            async for chunk in stream:
                record.model = chunk.model
                for choice in chunk.choices:
                    if choice.delta.content:
                        record.tokens.append(time.monotonic())
                    if choice.finish_reason:
                        record.finish_reason = choice.finish_reason
        except Exception as exc:  # counted as a failed request
            record.error = f"{exc.__class__.__name__}: {str(exc)[:120]}"


async def drive(node, versions: list[str], args) -> tuple[list[Request], list[dict]]:
    import httpx

    client = node.async_client(timeout=600)
    stop = asyncio.Event()
    requests: list[Request] = []
    workers = [asyncio.create_task(client_loop(client, i, args.tokens, stop, requests))
               for i in range(args.concurrency)]
    swaps: list[dict] = []
    async with httpx.AsyncClient(base_url=node.base_url, timeout=600) as http:
        await asyncio.sleep(args.warmup_s)
        rss_before = rss_mb(node.proc.pid)
        for version in versions:
            sent = time.monotonic()
            answer = await http.post("/admin/reload", json={"version": version},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
            answered = time.monotonic()
            status = (await http.get("/admin/status")).json()
            body = answer.json()
            swaps.append({"version": version, "http": answer.status_code, "outcome": body.get("status"),
                          "pause_s": body.get("pause_s"), "sent": sent, "answered": answered,
                          "last_swap": status.get("last_swap"), "rss_mb_before": rss_before})
            print(f"  swap to {version}: HTTP {answer.status_code} {body.get('status')}, node pause "
                  f"{(body.get('pause_s') or 0) * 1000:.1f} ms, reload took {answered - sent:.1f} s", flush=True)
            await asyncio.sleep(args.gap_s)
            swaps[-1]["rss_mb_after_gap"] = rss_before = rss_mb(node.proc.pid)
        stop.set()
        await asyncio.gather(*workers)
    return requests, swaps


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def in_windows(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= t <= end for start, end in windows)


def longest_stall(arrivals: list[float], start: float, end: float) -> float:
    """Longest stretch in [start, end] with no token arriving on any stream."""
    inside = [start] + [t for t in arrivals if start < t < end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:]))


def steady_stalls(arrivals: list[float], length: float, busy: list[tuple[float, float]]) -> list[float]:
    """Longest token-free stretch in each slice of `length` seconds that overlaps no busy window."""
    stalls, t = [], arrivals[0]
    while t + length < arrivals[-1]:
        if not any(t < b and t + length > a for a, b in busy):
            stalls.append(longest_stall(arrivals, t, t + length))
        t += length / 2
    return stalls


def to_monotonic(iso: str | None) -> float | None:
    from datetime import datetime

    if not iso:
        return None
    return datetime.fromisoformat(iso).timestamp() - (time.time() - time.monotonic())


def analyse(requests: list[Request], swaps: list[dict], settle_s: float = 0.5, around_s: float = 1.0) -> dict:
    reloads = [(s["sent"], s["answered"] + settle_s) for s in swaps]
    instants = []
    for s in swaps:
        applied = to_monotonic((s.get("last_swap") or {}).get("applied_at"))
        if applied is not None:
            instants.append((applied - (s["pause_s"] or 0) - around_s, applied + around_s))
    arrivals = sorted(t for r in requests for t in r.tokens)
    reload_stalls = [longest_stall(arrivals, a, b) for a, b in reloads]
    instant_stalls = [longest_stall(arrivals, a, b) for a, b in instants]
    steady_around = steady_stalls(arrivals, 2 * around_s, reloads) if arrivals else []
    steady_reload = (steady_stalls(arrivals, statistics.median(b - a for a, b in reloads), reloads)
                     if arrivals and reloads else [])
    ttft_in = [r.tokens[0] - r.sent for r in requests if r.tokens and in_windows(r.sent, reloads)]
    ttft_out = [r.tokens[0] - r.sent for r in requests if r.tokens and not in_windows(r.sent, reloads)]
    # a request "during a swap" is one whose lifetime overlaps a reload (verify, load, swap, health)
    during = [r for r in requests if any(r.sent <= b and (r.tokens[-1] if r.tokens else r.sent) >= a
                                         for a, b in reloads)]
    pauses = [s["pause_s"] for s in swaps if s["pause_s"] is not None]
    stages = {key: [s["last_swap"][key] for s in swaps if s.get("last_swap")] for key in ("verify_s", "load_s", "health_s")}
    ms = lambda values, f: f(values) * 1000 if values else None  # noqa: E731
    return {
        "swaps": len(swaps), "swapped": sum(s["outcome"] == "swapped" for s in swaps),
        "reload_s_median": statistics.median(s["answered"] - s["sent"] for s in swaps) if swaps else None,
        "node_pause_ms_max": ms(pauses, max), "node_pause_ms_median": ms(pauses, statistics.median),
        "stall_ms_around_swap_max": ms(instant_stalls, max),
        "stall_ms_steady_2s_max": ms(steady_around, max), "stall_ms_steady_2s_median": ms(steady_around, statistics.median),
        "stall_ms_in_reload_max": ms(reload_stalls, max),
        "stall_ms_steady_reload_len_max": ms(steady_reload, max),
        "ttft_ms_in_reload_p50": ms(ttft_in, statistics.median), "ttft_ms_in_reload_max": ms(ttft_in, max),
        "ttft_ms_steady_p50": ms(ttft_out, statistics.median),
        "ttft_ms_steady_p95": percentile(ttft_out, 0.95) * 1000 if ttft_out else None,
        "requests": len(requests), "requests_during_swaps": len(during),
        "failed_during_swaps": sum(r.failed for r in during), "failed_total": sum(r.failed for r in requests),
        "rows_in_flight_per_swap": [s["last_swap"]["rows_in_flight"] for s in swaps if s.get("last_swap")],
        "verify_s_median": statistics.median(stages["verify_s"]) if stages["verify_s"] else None,
        "load_s_median": statistics.median(stages["load_s"]) if stages["load_s"] else None,
        "health_s_median": statistics.median(stages["health_s"]) if stages["health_s"] else None,
        "errors": sorted({r.error for r in requests if r.error})[:5],
        "rss_mb": [round(swaps[0]["rss_mb_before"])] + [round(s["rss_mb_after_gap"]) for s in swaps] if swaps else [],
    }


def run_mode(drain: str, registry: Path, args) -> dict:
    from tests.node_process import start_node

    versions = [f"v{n:04d}" for n in range(2, args.swaps + 2)]
    config = {"model": {"ref": MODEL, "threads": args.threads},
              "redeploy": {"registry": f"registry:{registry}", "poll_interval_s": 0, "admin_token": TOKEN,
                           "drain": drain},
              "limits": {"max_batch_size": args.concurrency, "max_n": 1, "max_tokens_cap": max(64, args.tokens)}}
    print(f"[{drain}] starting the node on v0001 ...", flush=True)
    with start_node(None, config=config, ready_timeout=600) as node:
        requests, swaps = asyncio.run(drive(node, versions, args))
        histogram = node.metric("swarmloop_swap_pause_seconds_count")
    result = analyse(requests, swaps)
    result.update(drain=drain, pause_histogram_count=histogram)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=3, help="swaps per drain mode")
    parser.add_argument("--concurrency", type=int, default=6, help="clients streaming back to back")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--drain", default="overlap,hold", help="comma-separated drain modes to run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the node (0 = one per core)")
    parser.add_argument("--warmup-s", type=float, default=40.0, help="steady load before the first swap")
    parser.add_argument("--gap-s", type=float, default=30.0, help="steady load after each swap")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        print(f"building a registry of {args.swaps + 1} versions of {MODEL} ...", flush=True)
        registry = build_registry(Path(tmp), args.swaps + 1)
        results = [run_mode(mode.strip(), registry, args) for mode in args.drain.split(",") if mode.strip()]
    load = os.getloadavg()[0]
    print(f"\nhot swap, {MODEL}, {args.concurrency} streaming clients x {args.tokens} tokens, "
          f"{args.swaps} swaps per mode, load average {load:.1f}")
    for r in results:
        ms = {key: fmt(value) for key, value in r.items() if "_ms_" in key}
        print(f"\n[{r['drain']}] {r['swapped']}/{r['swaps']} swapped; requests {r['requests']} "
              f"({r['requests_during_swaps']} overlapping a swap)")
        print(f"  node pause (admission held): max {ms['node_pause_ms_max']} ms, median "
              f"{ms['node_pause_ms_median']} ms   target <= 1000 ms")
        print(f"  client stall (longest stretch with no token on any stream): around the swap instant "
              f"(+-1 s) max {ms['stall_ms_around_swap_max']} ms vs steady 2 s slices max "
              f"{ms['stall_ms_steady_2s_max']} ms, median {ms['stall_ms_steady_2s_median']} ms")
        print(f"  over the whole reload (verify+load+swap+health, median {fmt(r['reload_s_median'], 1)} s): max "
              f"{ms['stall_ms_in_reload_max']} ms vs steady slices of that length max "
              f"{ms['stall_ms_steady_reload_len_max']} ms")
        print(f"  time to first token: sent during a reload p50 {ms['ttft_ms_in_reload_p50']} ms, max "
              f"{ms['ttft_ms_in_reload_max']} ms; steady p50 {ms['ttft_ms_steady_p50']} ms, "
              f"p95 {ms['ttft_ms_steady_p95']} ms")
        print(f"  failed requests: {r['failed_during_swaps']} during swaps, {r['failed_total']} in all   target 0")
        print(f"  rows finishing on the old weights per swap: {r['rows_in_flight_per_swap']}")
        print(f"  node RSS before the first swap, then after each (MB): {r['rss_mb']}")
        print(f"  per swap (median): verify {fmt(r['verify_s_median'], 2)} s, load {fmt(r['load_s_median'], 2)} s, "
              f"health {fmt(r['health_s_median'], 2)} s")
        if r["errors"]:
            print(f"  errors: {r['errors']}")
    if len(results) == 2 and results[0]["node_pause_ms_max"] and results[1]["node_pause_ms_max"]:
        ratio = results[1]["node_pause_ms_max"] / max(results[0]["node_pause_ms_max"], 1e-3)
        print(f"\nmax node pause, {results[1]['drain']} / {results[0]['drain']}: {ratio:.0f}x")
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
