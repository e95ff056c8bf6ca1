"""The node's OpenAI-compatible HTTP server (FastAPI on uvicorn).

    POST /v1/chat/completions   non-stream and SSE stream (ends with `data: [DONE]`)
    GET  /v1/models[/{id}]      the served model, with its weight version and sha256
    GET  /health                503 while the model loads, 200 once a one-token generation worked
    GET  /metrics               Prometheus text format
    POST /admin/reload          hot-swap to a registry version (bearer token; see inference.hotswap_admin)
    GET  /admin/status          what is served, the last swap, the last refusal and why
    GET  /admin/identity        the node's key: node id, name, public key, its trusted-keys line

The model is loaded in a background thread after the server listens, so /health can say
"loading". Every error has the OpenAI shape {"error": {"message", "type", "param", "code"}}:
validation errors are 400 (never FastAPI's 422, and the OpenAPI schema says so), a body over
limits.max_body_bytes is 413. Prompts are tokenized in a worker thread, off the event loop.
Prompt and reply text never reach a log; they reach the capture hook only if one was given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.config import NodeConfig
from inference.engine_types import (
    ChoiceFinished,
    Completed,
    EngineStopped,
    Failed,
    GenerationRequest,
    QueueFull,
    RequestRejected,
    SamplingParams,
    TextDelta,
)
from inference.hooks import CaptureHook, will_store
from inference.loading import LoadedModel, ModelIdentity
from inference.metrics import NodeMetrics
from inference.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    completion_record,
    completion_response,
    error_body,
    model_aliases,
    new_completion_id,
    stream_chunk,
    usage_of,
)

log = logging.getLogger("swarmloop.server")
CHAT_PATH = "/v1/chat/completions"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 429, 500, 503)
}
MODEL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 500, 503)}
# Past this many bytes over the limit a body is no longer drained before the 413: the connection
# is closed instead (a client still uploading then sees a reset rather than the error body).
MAX_DRAIN_BYTES = 64 * 2**20


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


class NodeState:
    """What the app serves and how far it got: loading -> ready, or failed."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics, hook: CaptureHook | None):
        self.config = config
        self.metrics = metrics
        self.hook = hook
        self.engine = None                       # inference.engine.GenerationEngine once loaded
        self.status = "loading"
        self.error: str | None = None
        self.started_at = time.time()
        self.requests_served = 0
        self.redeployer = None                   # inference.hotswap.Redeployer, set by create_app
        self._listeners: list[Callable[[NodeState], None]] = []

    def on_change(self, listener: Callable[["NodeState"], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                log.exception("status listener failed")

    @property
    def identity(self) -> ModelIdentity | None:
        return self.engine.identity if self.engine is not None else None

    def aliases(self) -> set[str]:
        names = model_aliases(self.identity) if self.identity else set()
        # the ref the operator configured, and the registry it follows, stay valid after a hot swap
        names |= model_aliases(ModelIdentity(self.config.model.ref, "", ""))
        if self.config.redeploy.registry:
            names.add(self.config.redeploy.registry)
        return names

    def swap(self, loaded: LoadedModel, overlap: bool = True):
        """Hot-swap seam: serve `loaded` from the next batch on; metrics follow once applied.
        Returns a concurrent.futures.Future of the new ModelIdentity (engine.last_swap has its timing)."""
        if self.engine is None:
            raise RuntimeError(f"cannot swap while the node is {self.status}")
        future = self.engine.swap(loaded, overlap=overlap)

        def applied(done) -> None:
            if not done.cancelled() and done.exception() is None:
                self.metrics.set_model(done.result())
                self._changed()

        future.add_done_callback(applied)
        return future

    # -- background loading --
    def load(self, loaded: LoadedModel | None, on_failed: Callable[[str], None] | None,
             start_from_registry: bool = False) -> None:
        started = time.monotonic()
        try:
            from inference.engine import GenerationEngine
            from inference.loading import load_model

            self.config.model.apply_threads()
            if loaded is None and start_from_registry and self.redeployer is not None:
                loaded = self.redeployer.initial_model()  # None: empty, unreachable or refused
            if loaded is None:
                log.info("loading %s (%s)", self.config.model.ref, self.config.model.dtype)
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # the node's status line says it is loading
                loaded = load_model(self.config.model.ref, self.config.model.dtype)
            engine = GenerationEngine(loaded, self.config.limits, on_step=self.metrics.observe_step).start()
            # /health turns 200 only once a real generation went through the whole path
            engine.generate(GenerationRequest(messages=[{"role": "user", "content": "Hi"}],
                                              params=SamplingParams(max_tokens=1, temperature=0)), timeout=600)
            self.engine = engine
            self.metrics.track_engine(lambda: engine.queue_depth, lambda: engine.active_rows)
            self.metrics.set_model(engine.identity)
            self.status = "ready"
            log.info("ready: %s %s after %.1f s", engine.identity.ref, engine.identity.version,
                     time.monotonic() - started)
            if self.redeployer is not None:
                self.redeployer.start()
        except Exception as exc:  # a model that cannot load: say why in one line
            self.status, self.error = "failed", f"{exc.__class__.__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
            if on_failed is not None:
                on_failed(self.error)
        self._changed()


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    param = _param_of(tuple(first.get("loc", ())))
    if first.get("type") == "missing" and param is None:
        return "the request body is required", None
    message = str(first.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return (f"{param}: {message}{more}" if param else message + more), param


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _StatusCounter:
    """Counts chat-completion responses by status (a plain ASGI middleware: it leaves streaming
    and disconnect detection alone, unlike BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: NodeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != CHAT_PATH:
            return await self.app(scope, receive, send)
        status: dict[str, int] = {}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(status=str(status.get("code", 499))).inc()


class _BodyLimit:
    """413 with the OpenAI error body for a request body over `limit` bytes: at once when
    Content-Length says so, else (chunked uploads) as soon as the bytes received pass it.

    The body is read here, before the app sees it, and handed on as one message; the app's
    later receive() calls (disconnect detection) go straight to the server. The rest of an
    oversized body is drained (up to MAX_DRAIN_BYTES) so the client is done sending and reads the 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared_size = int(declared) if declared is not None else None
        except ValueError:
            declared_size = None
        received, chunks, more = 0, [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was complete
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            more = message.get("more_body", False)
            if received > self.limit or (declared_size is not None and declared_size > self.limit):
                while more and received <= self.limit + MAX_DRAIN_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    received += len(message.get("body", b""))
                    more = message.get("more_body", False)
                size = declared_size if declared_size is not None and declared_size > received else received
                response = JSONResponse(error_body(
                    f"the request body has {'more than ' if more else ''}{size} bytes, more than this node's "
                    f"limit of {self.limit} bytes", code="request_too_large"), status_code=413,
                    headers={"Connection": "close"} if more else None)
                return await response(scope, receive, send)
            chunks.append(chunk)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _errors_as_served(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema with FastAPI's 422 responses replaced by the 400s this server really
    sends (a RequestValidationError becomes a 400 with the OpenAI error body). Idempotent."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorResponse" not in components:
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["ErrorResponse"] = error_schema
    bad_request = {"description": "Bad Request",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if responses is not None and responses.pop("422", None) is not None:
                responses.setdefault("400", bad_request)
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log the exception's type and stack, never its message: messages can quote user text."""
    import traceback

    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s: %s\n%s", what, exc.__class__.__name__, frames)


def create_app(config: NodeConfig | None = None, *, capture_hook: CaptureHook | None = None,
               loaded: LoadedModel | None = None,
               on_load_failed: Callable[[str], None] | None = None,
               start_from_registry: bool = False, node_key: Any = None) -> FastAPI:
    """Build the app. The model (`loaded`, or config.model.ref) is loaded in a background thread
    when the app starts; `app.state.node` (NodeState) holds the engine and the swap seam.

    With start_from_registry (and [redeploy] registry set) the first model is the registry's
    latest version, verified, falling back to config.model.ref when there is none or it is refused.
    `node_key` (traces.signing.NodeKey): the node's identity, shown by GET /admin/identity.
    With config.integrity.proofs, requests the hook will store carry activation proofs."""
    from inference.hotswap import Redeployer
    from inference.hotswap_admin import admin_router, resolve_admin_token

    config = config or NodeConfig()
    metrics = NodeMetrics(config.limits.max_batch_size)
    state = NodeState(config, metrics, capture_hook)
    admin_token = resolve_admin_token(config.redeploy)
    state.redeployer = Redeployer(config.redeploy, config.model.dtype, state, metrics,
                                  admin_reload=admin_token is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(loaded, on_load_failed, start_from_registry),
                         name="swarmloop-loader", daemon=True).start()
        try:
            yield
        finally:
            state.redeployer.stop()
            if state.engine is not None:
                state.engine.stop()
            if capture_hook is not None:
                try:
                    capture_hook.close()
                except Exception:
                    log.exception("capture hook failed to close")

    app = FastAPI(title="swarmloop node", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat completions served by a swarmloop node.")
    app.state.node = state
    if capture_hook is not None:
        for router in capture_hook.routes():
            app.include_router(router)
    else:   # consent off: /v1/feedback still answers, in the OpenAI error shape, saying why it is 404
        from inference.feedback import feedback_off_router

        app.include_router(feedback_off_router())
    app.include_router(admin_router(state.redeployer, admin_token))

    # ---------------------------------------------------------------- errors
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, param=param, code="invalid_value" if param else None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), param=None, code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log_failure(log, f"unexpected error on {request.url.path}", exc)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    default_openapi = app.openapi
    app.openapi = lambda: _errors_as_served(default_openapi())  # type: ignore[method-assign]
    # added last = outermost: the counter also counts the 413s
    app.add_middleware(_BodyLimit, limit=config.limits.max_body_bytes)
    app.add_middleware(_StatusCounter, metrics=metrics)

    # ---------------------------------------------------------------- helpers
    def require_engine():
        if state.status != "ready":
            message = "the model is still loading" if state.status == "loading" else f"the model failed to load: {state.error}"
            raise OpenAIError(503, message, "service_unavailable", code="model_not_loaded")
        return state.engine

    def check_model(name: str) -> None:
        if name not in state.aliases():
            raise OpenAIError(404, f"The model `{name}` does not exist on this node (it serves {state.identity.ref})",
                              param="model", code="model_not_found")

    async def submit(body: ChatCompletionRequest, request: Request, streamed: bool):
        engine = require_engine()
        check_model(body.model)
        generation = body.to_generation_request()
        # read before tokenizing: if a swap lands in between, the engine re-tokenizes at admission
        tokenized_for = engine.identity
        try:
            # a long prompt takes a while to template and tokenize: keep the event loop serving
            prompt_ids = await run_in_threadpool(engine.check, generation)
        except RequestRejected as exc:
            raise OpenAIError(400, str(exc), param=exc.param, code=exc.code) from None
        completion_id = new_completion_id()
        headers = dict(request.headers)
        proofs = None
        if config.integrity.proofs and engine.supports_hidden_states and will_store(capture_hook, headers, body.metadata):
            from inference.proofs_serving import RequestProofs

            proofs = RequestProofs()
            generation.capture_hidden, generation.hidden_sink = True, proofs.sink

        def finished(handle) -> None:  # scheduler thread: keep it cheap
            final = handle._final
            if not isinstance(final, Completed):
                return
            result = final.result
            metrics.observe_result(result.prompt_tokens, result.completion_tokens, result.latency_s,
                                   result.time_to_first_token_s)
            state.requests_served += 1
            if result.cancelled:
                metrics.cancelled.inc()
            if capture_hook is not None:
                try:
                    record = completion_record(body, result, completion_id, headers, streamed)
                    if proofs is not None:     # finished by the hook's writer thread, off this one
                        from inference.proofs_serving import TokenizerOps

                        record.pending_proofs = proofs.pending(result, TokenizerOps.of(engine, result.identity))
                    capture_hook.on_completion(record)
                except Exception as exc:
                    log_failure(log, "capture hook failed", exc)

        try:
            handle = engine.submit(generation, loop=asyncio.get_running_loop(), on_done=finished,
                                   prompt_ids=prompt_ids, stream=streamed, tokenized_for=tokenized_for)
        except QueueFull as exc:
            raise OpenAIError(429, str(exc), "rate_limit_error", code="queue_full") from None
        except EngineStopped as exc:
            raise OpenAIError(503, str(exc), "service_unavailable", code="shutting_down") from None
        return handle, completion_id

    # ---------------------------------------------------------------- routes
    @app.post(CHAT_PATH, response_model=ChatCompletion, responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        handle, completion_id = await submit(body, request, streamed=bool(body.stream))
        if body.stream:
            return StreamingResponse(_stream(body, handle, completion_id), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result_task = asyncio.ensure_future(handle.aresult())
        gone_task = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({result_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_task.cancel()
        if not result_task.done():  # the client left: free its rows
            handle.cancel()
            result_task.cancel()
            return Response(status_code=499)
        try:
            result = result_task.result()
        except EngineStopped as exc:
            raise OpenAIError(503, str(exc), "service_unavailable", code="shutting_down") from None
        except Exception as exc:
            raise OpenAIError(500, str(exc), "server_error") from None
        return JSONResponse(completion_response(result, completion_id).model_dump())

    async def _stream(body: ChatCompletionRequest, handle, completion_id: str):
        created = int(time.time())
        include_usage = body.include_usage
        identity = None

        def chunk(choices, usage=None):
            return _sse(stream_chunk(completion_id, created, identity, choices, include_usage, usage))

        try:
            async for event in handle.aevents():
                if identity is None:  # known once admitted: a swap may happen while it waits
                    identity = handle.identity or state.engine.identity
                    for index in range(handle.n):
                        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}])
                if isinstance(event, TextDelta):
                    yield chunk([{"index": event.index, "delta": {"content": event.text},
                                  "logprobs": None, "finish_reason": None}])
                elif isinstance(event, ChoiceFinished):
                    yield chunk([{"index": event.index, "delta": {}, "logprobs": None,
                                  "finish_reason": event.finish_reason}])
                elif isinstance(event, Completed):
                    if include_usage:
                        yield chunk([], usage_of(event.result))
                elif isinstance(event, Failed):
                    yield _sse(error_body(str(event.error), "server_error"))
            yield _sse("[DONE]")
        finally:
            if not handle.replied:  # client disconnected mid-stream: its rows leave the batch
                handle.cancel()

    def model_card(identity: ModelIdentity) -> ModelCard:
        return ModelCard(id=identity.ref, created=int(state.started_at), version=identity.version,
                         weights_sha256=identity.weights_sha256)

    @app.get("/v1/models", response_model=ModelList, responses=MODEL_ERROR_RESPONSES)
    async def list_models():
        require_engine()
        return ModelList(data=[model_card(state.identity)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=MODEL_ERROR_RESPONSES)
    async def retrieve_model(model_id: str):
        require_engine()
        check_model(model_id)
        return model_card(state.identity)

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health():
        if state.status == "ready":
            identity = state.identity
            return {"status": "ok", "model": identity.ref, "version": identity.version,
                    "weights_sha256": identity.weights_sha256}
        message = "the model is still loading" if state.status == "loading" else f"the model failed to load: {state.error}"
        body = error_body(message, "service_unavailable", code="model_not_loaded")
        return JSONResponse({"status": state.status, **body}, status_code=503)

    @app.get("/admin/identity", responses={404: {"model": ErrorResponse}})
    async def node_identity():
        if node_key is None:
            return JSONResponse(error_body("this node has no signing key", code="not_found"), status_code=404)
        name = config.node_id or node_key.node_id
        return {"node_id": node_key.node_id, "name": name, "public_key": node_key.public_key_b64,
                "trusted_keys_line": f"{json.dumps(name)} = \"{node_key.public_key_b64}\"",
                "signing": getattr(capture_hook, "key", None) is not None,
                "proofs": bool(config.integrity.proofs and capture_hook is not None)}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
