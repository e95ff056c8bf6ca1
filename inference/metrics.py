"""Prometheus metrics of a node, on a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created timestamps only add noise to a node's scrape

from inference.loading import ModelIdentity

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REDEPLOY_OUTCOMES = ("swapped", "refused", "rolled_back", "unavailable")


class NodeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("swarmloop_requests", "Chat completion requests by HTTP status", ["status"], registry=r)
        self.prompt_tokens = Counter("swarmloop_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("swarmloop_completion_tokens", "Completion tokens generated", registry=r)
        self.latency = Histogram("swarmloop_request_latency_seconds", "Request latency, arrival to last token",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("swarmloop_time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.batch_size = Histogram("swarmloop_batch_size", "Rows decoded together per decode step",
                                    buckets=tuple(range(1, max_batch_size + 1)), registry=r)
        self.queue_depth = Gauge("swarmloop_queue_depth", "Requests waiting for a free row", registry=r)
        self.active_rows = Gauge("swarmloop_active_rows", "Rows being decoded", registry=r)
        self.model_loaded = Gauge("swarmloop_model_loaded", "1 once the model answers, else 0", registry=r)
        self.model_info = Info("swarmloop_model", "The served model: ref, weight version, weights sha256", registry=r)
        self.cancelled = Counter("swarmloop_cancelled_requests", "Requests cancelled by a client disconnect", registry=r)
        self.swap_pause = Histogram("swarmloop_swap_pause_seconds",
                                    "Hot swaps: how long new requests were held back (swap requested to applied)",
                                    buckets=PAUSE_BUCKETS, registry=r)
        self.redeploys = Counter("swarmloop_redeploys", "Redeploy attempts by outcome", ["outcome"], registry=r)
        for outcome in REDEPLOY_OUTCOMES:
            self.redeploys.labels(outcome=outcome)  # every outcome shows, at 0, from the first scrape
        self.registry_poll_errors = Counter("swarmloop_registry_poll_errors",
                                            "Polls of the followed registry that could not reach or read it", registry=r)

    def track_engine(self, queue_depth: Callable[[], int], active_rows: Callable[[], int]) -> None:
        """Read queue depth and active rows live at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.active_rows.set_function(active_rows)

    def set_model(self, identity: ModelIdentity) -> None:
        self.model_info.info({"ref": identity.ref, "version": identity.version,
                              "weights_sha256": identity.weights_sha256})
        self.model_loaded.set(1)

    def observe_step(self, rows: int) -> None:
        self.batch_size.observe(rows)

    def observe_result(self, prompt_tokens: int, completion_tokens: int, latency_s: float,
                       ttft_s: float | None) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
