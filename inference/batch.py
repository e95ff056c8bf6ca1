"""Batch jobs in the OpenAI Batch format, run in-process through the batched engine.

Input lines:  {"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Output lines: {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {...} | null}

As in OpenAI's Batch output, a line that got an HTTP answer has `response` and `error: null`,
whatever its status: 200 with the chat.completion body, 4xx with the OpenAI error body the
server would have sent for the same request (bad body 400, unknown model 404, wrong method or
url 400), 500 when generation (or preparing the request) failed. `error` ({"code", "message",
"line"}, `response: null`) is only for lines that never became a request: invalid JSON, no
custom_id string, a custom_id seen on an earlier line. One bad line never stops the run, and
neither does a capture hook that raises: that completion's trace is lost, its reply is in OUT
(BatchSummary.capture_errors counts them). A custom_id holding a lone surrogate is written with
\\uXXXX escapes, so it reads back identical and a re-run skips it.

Resumable: OUT is appended one line at a time (write, flush, fsync), so a crash loses at most the
line being written; a torn last line is cut off on the next run, and custom_ids already in OUT
are skipped. Lines without a usable custom_id (invalid JSON, missing id, duplicate id) are
reported with their line number, which is also how a re-run recognises them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from inference.config import NodeConfig
from inference.hooks import CaptureHook
from inference.loading import ModelIdentity
from inference.openai_schemas import (
    ChatCompletionRequest,
    completion_record,
    completion_response,
    error_body,
    model_aliases,
    new_completion_id,
)

log = logging.getLogger("swarmloop.batch")
CHAT_URL = "/v1/chat/completions"
LINE_KEYED = {"invalid_json", "missing_custom_id", "duplicate_custom_id", "invalid_line"}


@dataclass
class BatchSummary:
    succeeded: int = 0
    failed: int = 0          # lines reported as errors in this run
    skipped: int = 0         # already in OUT from an earlier run
    repaired_tail: bool = False
    capture_errors: int = 0  # completions the capture hook failed to take (the batch went on)


@dataclass
class _Job:
    line: int
    custom_id: str
    request: ChatCompletionRequest
    generation: Any = None
    prompt_ids: list[int] = field(default_factory=list)


def _line_error(line: int, code: str, message: str, custom_id: str | None = None) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message, "line": line}}


def _http_error(custom_id: str, status: int, message: str, param: str | None = None,
                code: str | None = None, type_: str = "invalid_request_error") -> dict[str, Any]:
    """A request that got an HTTP error answer: it is in `response`, and `error` stays null."""
    body = error_body(message, type_, param=param, code=code)
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
            "error": None}


def _server_error(custom_id: str, what: str, exc: BaseException) -> dict[str, Any]:
    return _http_error(custom_id, 500, f"{what}: {exc.__class__.__name__}: {exc}", None, "server_error",
                       "server_error")


def _success(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
            "error": None}


class OutputFile:
    """Append-only JSONL writer that survives crashes, plus what an earlier run already did."""

    def __init__(self, path: Path):
        self.path = path
        self.done_ids: set[str] = set()
        self.done_lines: set[int] = set()
        self.repaired_tail = self._read_existing()
        self._handle = open(path, "ab")

    def _read_existing(self) -> bool:
        if not self.path.exists():
            return False
        data = self.path.read_bytes()
        repaired = False
        if data and not data.endswith(b"\n"):  # torn write from a crash: cut it off
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            data, repaired = data[:keep], True
        for raw in data.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # not ours to judge; the line's job will simply run again
            if not isinstance(entry, dict):
                continue
            error = entry.get("error") or {}
            if isinstance(error, dict) and error.get("code") in LINE_KEYED and isinstance(error.get("line"), int):
                self.done_lines.add(error["line"])
            elif isinstance(entry.get("custom_id"), str):
                self.done_ids.add(entry["custom_id"])
        return repaired

    def write(self, entry: dict[str, Any]) -> None:
        try:
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a lone surrogate (in a custom_id, say): \uXXXX escapes keep it exact
            line = json.dumps(entry, separators=(",", ":")).encode()
        self._handle.write(line + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def parse_input(in_path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[_Job]]:
    """Split IN into early error lines (keyed by line number or custom_id) and valid jobs.

    Body-level checks that need the model (aliases, token limits) happen later."""
    errors: list[tuple[int, dict[str, Any]]] = []
    jobs: list[_Job] = []
    seen: set[str] = set()
    with open(in_path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            custom_id: str | None = None
            try:
                try:
                    entry = json.loads(raw)
                except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                    errors.append((number, _line_error(number, "invalid_json", f"line {number}: not valid JSON ({reason})")))
                    continue
                candidate = entry.get("custom_id") if isinstance(entry, dict) else None
                if not isinstance(candidate, str) or not candidate:
                    errors.append((number, _line_error(number, "missing_custom_id", f"line {number}: no custom_id string")))
                    continue
                if candidate in seen:
                    errors.append((number, _line_error(number, "duplicate_custom_id",
                                                       f"line {number}: custom_id {candidate!r} appears earlier", candidate)))
                    continue
                custom_id = candidate
                seen.add(custom_id)
                request = _request_of(custom_id, entry)
                if isinstance(request, dict):  # the error response the server would have sent
                    errors.append((number, request))
                    continue
                jobs.append(_Job(number, custom_id, request))
            except Exception as exc:  # whatever this line holds, the other lines still run
                if custom_id is None:
                    errors.append((number, _line_error(number, "invalid_line",
                                                       f"line {number}: could not be read ({exc.__class__.__name__})")))
                else:
                    errors.append((number, _server_error(custom_id, "could not read the request", exc)))
    return errors, jobs


def _request_of(custom_id: str, entry: dict[str, Any]) -> ChatCompletionRequest | dict[str, Any]:
    """The line's validated request, or the error response when the server would refuse its
    method, url or body."""
    if entry.get("method") != "POST":
        return _http_error(custom_id, 400, "method must be POST", "method", "invalid_method")
    if entry.get("url") != CHAT_URL:
        return _http_error(custom_id, 400, f"url must be {CHAT_URL}", "url", "invalid_url")
    try:
        request = ChatCompletionRequest.model_validate(entry.get("body"))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = str(first.get("msg", "invalid body")).removeprefix("Value error, ")
        return _http_error(custom_id, 400, f"body.{param}: {message}" if param else message, param, "invalid_value")
    if request.stream:
        return _http_error(custom_id, 400, "stream is not allowed in a batch", "stream", "invalid_value")
    return request


def run_batch(in_path: Path, out_path: Path, config: NodeConfig, *, capture_hook: CaptureHook | None = None,
              loaded: Any = None, on_progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Run every not-yet-done line of IN and append its result to OUT.

    on_progress(stage, done, total) is called with stage "load" once and "run" after each line."""
    from inference.engine import GenerationEngine
    from inference.engine_types import Completed, EngineError, EngineStopped, RequestRejected
    from inference.loading import load_model

    summary = BatchSummary()
    out = OutputFile(out_path)
    summary.repaired_tail = out.repaired_tail
    try:
        errors, jobs = parse_input(in_path)
        for number, entry in errors:
            line_keyed = entry["error"] is not None
            if number in out.done_lines if line_keyed else entry["custom_id"] in out.done_ids:
                summary.skipped += 1
                continue
            out.write(entry)
            summary.failed += 1
        todo = [job for job in jobs if job.custom_id not in out.done_ids]
        summary.skipped += len(jobs) - len(todo)
        if not todo:
            return summary
        if on_progress:
            on_progress("load", 0, len(todo))
        config.model.apply_threads()
        loaded = loaded or load_model(config.model.ref, config.model.dtype)
        engine = GenerationEngine(loaded, config.limits).start()
        served = model_aliases(engine.identity) | model_aliases(ModelIdentity(config.model.ref, "", ""))
        finished: queue.SimpleQueue = queue.SimpleQueue()
        in_flight = 0
        done = 0
        try:
            pending = iter(todo)
            exhausted = False
            while not exhausted or in_flight:
                # keep the engine's queue full, but never over its limit
                while not exhausted and in_flight < config.limits.queue_size:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    if job.request.model not in served:
                        out.write(_http_error(job.custom_id, 404, f"The model `{job.request.model}` is not served here",
                                              "model", "model_not_found"))
                        summary.failed += 1
                        done += 1
                        continue
                    try:
                        job.generation = job.request.to_generation_request()
                        job.prompt_ids = engine.check(job.generation)
                        engine.submit(job.generation, prompt_ids=job.prompt_ids, stream=False,
                                      on_done=lambda handle, job=job: finished.put((job, handle)))
                    except RequestRejected as exc:
                        out.write(_http_error(job.custom_id, 400, str(exc), exc.param, exc.code))
                    except EngineStopped:
                        raise  # not this line's fault: nothing after it could run either
                    except Exception as exc:  # e.g. the tokenizer refusing this prompt: this line only
                        out.write(_server_error(job.custom_id, "could not prepare the request", exc))
                    else:
                        in_flight += 1
                        continue
                    summary.failed += 1
                    done += 1
                if in_flight:
                    job, handle = finished.get()
                    in_flight -= 1
                    final = handle._final
                    if isinstance(final, Completed):
                        completion_id = new_completion_id()
                        result = final.result
                        try:
                            body = completion_response(result, completion_id).model_dump()
                        except Exception as exc:
                            out.write(_server_error(job.custom_id, "could not build the response", exc))
                            summary.failed += 1
                        else:
                            out.write(_success(job.custom_id, body))
                            summary.succeeded += 1
                            if capture_hook is not None and not _capture(capture_hook, job, result, completion_id):
                                summary.capture_errors += 1
                    else:
                        error = final.error if final is not None else EngineError("no result")
                        out.write(_http_error(job.custom_id, 500, str(error), None, "generation_failed",
                                              "server_error"))
                        summary.failed += 1
                    done += 1
                if on_progress:
                    on_progress("run", done, len(todo))
        finally:
            engine.stop()
        return summary
    finally:
        out.close()


def _capture(hook: CaptureHook, job: _Job, result: Any, completion_id: str) -> bool:
    """Hand one completion to the capture hook; a failing hook costs that trace, never the batch.
    Only the exception's type is logged: its message could quote the prompt."""
    try:
        hook.on_completion(completion_record(job.request, result, completion_id))
        return True
    except Exception as exc:
        log.error("capture hook failed on %s: %s", job.custom_id, exc.__class__.__name__)
        return False
