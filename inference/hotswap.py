"""Hot-swap redeploy: follow a registry, verify, load in the background, swap between batches, roll back.

    redeployer = Redeployer(config.redeploy, config.model.dtype, node_state, metrics)
    loaded = redeployer.initial_model()      # the registry's latest (verified, healthy) or None
    redeployer.start()                        # polls every poll_interval_s in a daemon thread
    redeployer.reload("v0002")               # what POST /admin/reload runs -> ReloadOutcome
    redeployer.status()                       # what GET /admin/status returns

One attempt, in the calling (background) thread while the node keeps serving:
fetch -> verify (manifest signature when trusted keys are set, then every sha256) -> load
(inference.loading.load_model) -> health generation on the new model -> engine swap (rows in
flight finish on the old weights; new requests start on the new ones) -> health generation through
the engine. The first failure keeps the old model serving (or swaps back to it after the swap),
logs one line and remembers the refusal by (version, weights sha256), so polling does not retry
it until the registry's `latest` moves. An explicit reload always tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from inference.config import RedeployConfig
from inference.hotswap_checks import (
    CheckpointRefused,
    claimed_weights_sha256,
    health_generation,
    load_trusted_keys,
    serving_health,
    verify_checkpoint,
)
from inference.hotswap_sources import Candidate, SourceError, open_source

log = logging.getLogger("swarmloop.redeploy")

Outcome = Literal["swapped", "unchanged", "refused", "rolled_back", "unavailable", "not_found"]


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS. A model is ~hundreds of tensors of
    a few MB: glibc keeps them in per-thread arenas after they are freed, and every load runs in
    another thread, so without a trim the node's RSS grows by about one model per swap."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SwapRecord(BaseModel):
    from_version: str | None
    to_version: str
    ref: str
    weights_sha256: str
    trigger: str                       # startup | poll | admin
    at: str                            # when the attempt finished (after the post-swap health check)
    applied_at: str | None = None      # when the engine switched models (wall clock)
    pause_s: float | None = None       # how long new requests were held (swap requested -> applied)
    drain_s: float | None = None       # how long the old weights kept decoding rows in flight
    rows_in_flight: int = 0            # rows that finished on the old weights
    verify_s: float = 0.0
    load_s: float = 0.0
    health_s: float = 0.0


class Refusal(BaseModel):
    version: str
    weights_sha256: str                # what the manifest claims ("" when it cannot be read)
    stage: str                         # fetch | signature | verify | load | health | post-swap health
    reason: str
    trigger: str
    at: str
    rolled_back: bool = False          # True: it served briefly and the node swapped back


class ReloadOutcome(BaseModel):
    status: Outcome
    version: str | None = None         # the version that was tried
    serving: str | None = None         # the version served afterwards
    reason: str | None = None
    stage: str | None = None
    pause_s: float | None = None


class ServedModel(BaseModel):
    ref: str
    version: str
    weights_sha256: str


class RedeployStatus(BaseModel):
    node: str                          # loading | ready | failed
    serving: ServedModel | None
    serving_since: str | None
    registry: str | None
    poll_interval_s: float
    admin_reload: bool                 # POST /admin/reload is enabled (a token is configured)
    latest: str | None                 # the registry's latest version at the last poll
    last_poll_at: str | None
    last_poll_error: str | None
    reloading: str | None              # the version being tried right now
    swaps: int
    refusals: int
    last_swap: SwapRecord | None
    last_refusal: Refusal | None
    refused: list[Refusal]             # remembered: not retried by polling until `latest` moves


class Redeployer:
    def __init__(self, config: RedeployConfig, dtype: str, state: Any, metrics: Any,
                 admin_reload: bool = False):
        self.config = config
        self.dtype = dtype
        self.state = state                 # inference.server.NodeState
        self.metrics = metrics             # inference.metrics.NodeMetrics
        self.admin_reload = admin_reload
        self.source = open_source(config.registry) if config.registry else None
        self.trusted = load_trusted_keys(config.trusted_keys)
        self._attempt_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: dict[tuple[str, str], Refusal] = {}
        self._latest_seen: str | None = None
        self._last_poll_at: str | None = None
        self._poll_error: str | None = None
        self._reloading: str | None = None
        self._swaps = 0
        self._refusals = 0
        self._last_swap: SwapRecord | None = None
        self._last_timing: Any = None      # engine SwapTiming of the last swap (drain fills in later)
        self._last_refusal: Refusal | None = None
        self._serving_since: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start polling (when a registry and an interval are configured); call once the node serves."""
        self._serving_since = self._serving_since or _now()
        if self.source is None or self.config.poll_interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="swarmloop-redeploy", daemon=True)
        self._thread.start()
        log.info("following %s every %g s", self.source.ref, self.config.poll_interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.poll()
            except Exception as exc:  # the poller must outlive any one bad poll
                log.error("registry poll failed: %s", exc.__class__.__name__, exc_info=True)

    # ------------------------------------------------------------------ startup
    def initial_model(self) -> Any:
        """The registry's latest version, verified, loaded and healthy; None (serve the configured
        model) when the registry is empty, unreachable, or its latest is refused."""
        if self.source is None:
            return None
        latest = self._ask_latest()
        if latest is None:  # empty (said here), or unreachable (_ask_latest said so)
            if self._poll_error is None:
                log.info("%s has no published version yet: serving the configured model", self.source.ref)
            return None
        self._latest_seen = latest
        log.info("starting on %s of %s", latest, self.source.ref)
        try:
            candidate = self.source.fetch(latest)
        except SourceError as exc:
            log.warning("%s: serving the configured model", _one_line(str(exc)))
            return None
        claimed = claimed_weights_sha256(candidate.folder)
        try:
            loaded, durations = self._prepare(candidate)
        except CheckpointRefused as refusal:
            self._refuse(candidate.version, claimed, refusal, "startup", None)
            return None
        self._last_swap = SwapRecord(from_version=None, to_version=candidate.version, ref=candidate.ref,
                                     weights_sha256=loaded.identity.weights_sha256, trigger="startup",
                                     at=_now(), **durations)
        return loaded

    # ------------------------------------------------------------------ polling and reloads
    def poll(self) -> ReloadOutcome | None:
        """Look at the registry's latest once; try it if it is new and not remembered as refused."""
        if self.source is None or self.state.engine is None:
            return None
        latest = self._ask_latest()
        if latest is None:
            return None
        if latest != self._latest_seen:  # `latest` moved: forget earlier refusals
            self._latest_seen = latest
            self._refused.clear()
        identity = self.state.engine.identity
        if identity.version == latest and identity.ref == f"{self.source.ref}@{latest}":
            return None
        return self._attempt(latest, "poll", force=False)

    def reload(self, version: str | None = None) -> ReloadOutcome:
        """Try `version` (default: the registry's latest) now, even if it was refused before."""
        if self.source is None:
            raise SourceError("this node follows no registry (set [redeploy] registry or --registry)")
        if version is None:
            version = self._ask_latest()
            if version is None:
                if self._poll_error is not None:
                    return ReloadOutcome(status="unavailable", reason=self._poll_error, serving=self._serving())
                return ReloadOutcome(status="not_found", reason=f"{self.source.ref} has no latest version",
                                     serving=self._serving())
        return self._attempt(version, "admin", force=True)

    def _ask_latest(self) -> str | None:
        self._last_poll_at = _now()
        try:
            latest = self.source.latest()
        except SourceError as exc:
            message = _one_line(str(exc))
            self.metrics.registry_poll_errors.inc()
            if message != self._poll_error:  # log a change of state, not every failed poll
                log.warning("registry poll: %s; still serving %s", message, self._serving() or "the configured model")
            self._poll_error = message
            return None
        if self._poll_error is not None:
            log.info("registry %s reachable again", self.source.ref)
            self._poll_error = None
        return latest

    def _serving(self) -> str | None:
        engine = self.state.engine
        return engine.identity.version if engine is not None else None

    # ------------------------------------------------------------------ one attempt
    def _attempt(self, version: str, trigger: str, *, force: bool) -> ReloadOutcome:
        with self._attempt_lock:
            self._reloading = version
            try:
                return self._attempt_locked(version, trigger, force)
            finally:
                self._reloading = None

    def _attempt_locked(self, version: str, trigger: str, force: bool) -> ReloadOutcome:
        engine = self.state.engine
        if engine is None:
            return ReloadOutcome(status="unavailable", version=version, reason=f"the node is {self.state.status}")
        current = engine.identity
        try:
            candidate = self.source.fetch(version)
        except SourceError as exc:
            status: Outcome = "unavailable" if exc.unreachable else "not_found"
            if status == "unavailable":
                self.metrics.redeploys.labels(outcome="unavailable").inc()
            return ReloadOutcome(status=status, version=version, reason=_one_line(str(exc)), serving=current.version)
        version = candidate.version
        claimed = claimed_weights_sha256(candidate.folder)
        if current.version == version and current.weights_sha256 == claimed:
            return ReloadOutcome(status="unchanged", version=version, serving=version)
        remembered = self._refused.get((version, claimed))
        if remembered is not None and not force:
            return ReloadOutcome(status="rolled_back" if remembered.rolled_back else "refused", version=version,
                                 reason=remembered.reason, stage=remembered.stage, serving=current.version)
        try:
            loaded, durations = self._prepare(candidate)
        except CheckpointRefused as refusal:
            return self._refuse(version, claimed, refusal, trigger, current.version)
        overlap = self.config.drain == "overlap"
        old = engine.loaded
        try:
            identity = self.state.swap(loaded, overlap=overlap).result()
        except Exception as exc:  # EngineStopped, or the future cancelled by a shutdown
            return ReloadOutcome(status="unavailable", version=version, serving=self._serving(),
                                 reason=f"the swap did not happen ({exc.__class__.__name__}): is the node stopping?")
        timing = engine.last_swap
        try:
            started = time.monotonic()
            serving_health(engine, identity, self.config.health_prompt, self.config.health_max_tokens,
                           self.config.health_timeout_s)
            durations["health_s"] += time.monotonic() - started
        except CheckpointRefused as refusal:
            try:
                self.state.swap(old, overlap=overlap).result()
            except Exception as exc:
                log.error("rolling back to %s failed (%s)", old.identity.version, exc.__class__.__name__)
            return self._refuse(version, claimed, refusal, trigger, old.identity.version, rolled_back=True)
        pause = timing.pause_s if timing is not None else None
        applied_at = None
        if timing is not None and timing.applied_at is not None:
            wall = time.time() - (time.monotonic() - timing.applied_at)
            applied_at = datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")
        if pause is not None:
            self.metrics.swap_pause.observe(pause)
        self.metrics.redeploys.labels(outcome="swapped").inc()
        self._swaps += 1
        self._last_timing = timing
        self._serving_since = _now()
        self._last_swap = SwapRecord(from_version=current.version, to_version=version, ref=identity.ref,
                                     weights_sha256=identity.weights_sha256, trigger=trigger, at=self._serving_since,
                                     applied_at=applied_at, pause_s=pause, rows_in_flight=timing.rows_in_flight if timing else 0,
                                     **durations)
        log.info("swapped %s -> %s (%s): new requests held %.1f ms, %d rows finished on %s; "
                 "verify %.2f s, load %.2f s, health %.2f s", current.version, version, trigger,
                 (pause or 0) * 1000, self._last_swap.rows_in_flight, current.version,
                 durations["verify_s"], durations["load_s"], durations["health_s"])
        del old, loaded  # the engine's retiring batch holds the old weights until its rows finish
        threading.Thread(target=self._release_after_drain, args=(timing,), name="swarmloop-release",
                         daemon=True).start()
        return ReloadOutcome(status="swapped", version=version, serving=version, pause_s=pause)

    def _release_after_drain(self, timing: Any, limit_s: float = 3600.0) -> None:
        deadline = time.monotonic() + limit_s
        while timing is not None and timing.drained_at is None and time.monotonic() < deadline:
            if self._stop.wait(0.5):
                return
        release_freed_memory()

    def _prepare(self, candidate: Candidate) -> tuple[Any, dict[str, float]]:
        """Verify, load and health-check `candidate` without touching what the node serves."""
        from inference.loading import load_model
        from inference.model_refs import ResolvedModel

        release_freed_memory()  # the model the previous swap retired, or one refused after loading
        started = time.monotonic()
        _, digest = verify_checkpoint(candidate.folder, candidate.version, self.trusted)
        verified = time.monotonic()
        kind = "registry" if candidate.ref.startswith("registry:") else "hf"
        resolved = ResolvedModel(ref=candidate.ref, kind=kind, path=candidate.folder, version=candidate.version,
                                 weights_sha256=digest)
        try:
            loaded = load_model(resolved, self.dtype)
        except Exception as exc:
            raise CheckpointRefused("load", _one_line(f"{exc.__class__.__name__}: {exc}")) from None
        loaded_at = time.monotonic()
        health_generation(loaded, self.config.health_prompt, self.config.health_max_tokens)
        return loaded, {"verify_s": verified - started, "load_s": loaded_at - verified,
                        "health_s": time.monotonic() - loaded_at}

    def _refuse(self, version: str, claimed: str, refusal: CheckpointRefused, trigger: str,
                serving: str | None, rolled_back: bool = False) -> ReloadOutcome:
        record = Refusal(version=version, weights_sha256=claimed, stage=refusal.stage,
                         reason=_one_line(refusal.reason), trigger=trigger, at=_now(), rolled_back=rolled_back)
        self._refused[(version, claimed)] = record
        self._last_refusal = record
        self._refusals += 1
        self.metrics.redeploys.labels(outcome="rolled_back" if rolled_back else "refused").inc()
        still = f"rolled back to {serving}" if rolled_back else (f"still serving {serving}" if serving
                                                                 else "serving the configured model")
        log.warning("refused %s at %s: %s; %s", version, record.stage, record.reason, still)
        return ReloadOutcome(status="rolled_back" if rolled_back else "refused", version=version, serving=serving,
                             reason=record.reason, stage=record.stage)

    # ------------------------------------------------------------------ status
    def status(self) -> RedeployStatus:
        identity = self.state.identity
        last_swap = self._last_swap
        timing = self._last_timing
        if last_swap is not None and timing is not None and last_swap.drain_s is None and timing.drain_s is not None:
            last_swap = last_swap.model_copy(update={"drain_s": timing.drain_s})
            self._last_swap = last_swap
        return RedeployStatus(
            node=self.state.status,
            serving=ServedModel(ref=identity.ref, version=identity.version, weights_sha256=identity.weights_sha256)
            if identity is not None else None,
            serving_since=self._serving_since,
            registry=self.source.ref if self.source is not None else None,
            poll_interval_s=self.config.poll_interval_s,
            admin_reload=self.admin_reload,
            latest=self._latest_seen,
            last_poll_at=self._last_poll_at,
            last_poll_error=self._poll_error,
            reloading=self._reloading,
            swaps=self._swaps,
            refusals=self._refusals,
            last_swap=last_swap,
            last_refusal=self._last_refusal,
            refused=list(self._refused.values()),
        )
