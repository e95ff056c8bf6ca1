"""Batch jobs in the OpenAI Batch format, run in-process through the batched engine.

Input lines:  {"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Output lines: {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {...} | null}

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
LINE_KEYED = {"invalid_json", "missing_custom_id", "duplicate_custom_id"}


@dataclass
class BatchSummary:
    succeeded: int = 0
    failed: int = 0          # lines reported as errors in this run
    skipped: int = 0         # already in OUT from an earlier run
    repaired_tail: bool = False


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
                code: str | None = None) -> dict[str, Any]:
    body = error_body(message, param=param, code=code)
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
            "error": {"code": code or "invalid_request", "message": message}}


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
        self._handle.write((json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
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
            try:
                entry = json.loads(raw)
            except ValueError as exc:
                errors.append((number, _line_error(number, "invalid_json", f"line {number}: not valid JSON ({exc.msg})")))
                continue
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                errors.append((number, _line_error(number, "missing_custom_id", f"line {number}: no custom_id string")))
                continue
            if custom_id in seen:
                errors.append((number, _line_error(number, "duplicate_custom_id",
                                                   f"line {number}: custom_id {custom_id!r} appears earlier", custom_id)))
                continue
            seen.add(custom_id)
            if entry.get("method") != "POST":
                errors.append((number, _http_error(custom_id, 400, "method must be POST", "method", "invalid_method")))
                continue
            if entry.get("url") != CHAT_URL:
                errors.append((number, _http_error(custom_id, 400, f"url must be {CHAT_URL}", "url", "invalid_url")))
                continue
            try:
                request = ChatCompletionRequest.model_validate(entry.get("body"))
            except ValidationError as exc:
                first = exc.errors()[0]
                param = ".".join(str(p) for p in first.get("loc", ())) or None
                message = str(first.get("msg", "invalid body")).removeprefix("Value error, ")
                errors.append((number, _http_error(custom_id, 400, f"body.{param}: {message}" if param else message,
                                                   param, "invalid_value")))
                continue
            if request.stream:
                errors.append((number, _http_error(custom_id, 400, "stream is not allowed in a batch", "stream",
                                                   "invalid_value")))
                continue
            jobs.append(_Job(number, custom_id, request))
    return errors, jobs


def run_batch(in_path: Path, out_path: Path, config: NodeConfig, *, capture_hook: CaptureHook | None = None,
              loaded: Any = None, on_progress: Callable[[str, int, int], None] | None = None) -> BatchSummary:
    """Run every not-yet-done line of IN and append its result to OUT.

    on_progress(stage, done, total) is called with stage "load" once and "run" after each line."""
    from inference.engine import GenerationEngine
    from inference.engine_types import Completed, EngineError, RequestRejected
    from inference.loading import load_model

    summary = BatchSummary()
    out = OutputFile(out_path)
    summary.repaired_tail = out.repaired_tail
    try:
        errors, jobs = parse_input(in_path)
        for number, entry in errors:
            if number in out.done_lines or (entry["custom_id"] in out.done_ids and entry["error"].get("line") is None):
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
                    job.generation = job.request.to_generation_request()
                    try:
                        job.prompt_ids = engine.check(job.generation)
                    except RequestRejected as exc:
                        out.write(_http_error(job.custom_id, 400, str(exc), exc.param, exc.code))
                        summary.failed += 1
                        done += 1
                        continue
                    engine.submit(job.generation, prompt_ids=job.prompt_ids, stream=False,
                                  on_done=lambda handle, job=job: finished.put((job, handle)))
                    in_flight += 1
                if in_flight:
                    job, handle = finished.get()
                    in_flight -= 1
                    final = handle._final
                    if isinstance(final, Completed):
                        completion_id = new_completion_id()
                        result = final.result
                        out.write(_success(job.custom_id, completion_response(result, completion_id).model_dump()))
                        summary.succeeded += 1
                        if capture_hook is not None:
                            capture_hook.on_completion(completion_record(job.request, result, completion_id))
                    else:
                        error = final.error if final is not None else EngineError("no result")
                        out.write(_http_error(job.custom_id, 500, str(error), None, "generation_failed"))
                        summary.failed += 1
                    done += 1
                if on_progress:
                    on_progress("run", done, len(todo))
        finally:
            engine.stop()
        return summary
    finally:
        out.close()
