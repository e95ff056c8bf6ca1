"""POST /v1/feedback: what a user thought of a completion, keyed by its id.

    {"completion_id": "chatcmpl-...", "thumbs": 1}                    # or -1; a KTO row
    {"completion_id": "chatcmpl-...", "choice": 2}                     # preferred choice of n; DPO pairs
    {"completion_id": "chatcmpl-...", "correction": "...", "choice_index": 0}   # a DPO pair
    {"completion_id": "chatcmpl-...", "comment": "..."}                # kept with the trace

Fields combine. Answers 200 with {"id", "object": "feedback", "completion_id", "created",
"pairs", "kto_rows"}; 404 when this node holds no trace of that completion (never stored, opted
out, or expired); 400 on bad input. Errors have the OpenAI shape. Texts are redacted like traces.
A node with consent off mounts `feedback_off_router()`: the same validation, then always 404 (it
stores nothing, so no completion can take feedback), saying why.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.openai_schemas import error_body
from traces.schemas import Feedback
from traces.store import FeedbackError, TraceNotFound

if TYPE_CHECKING:
    from inference.capture import TraceCapture

FEEDBACK_PATH = "/v1/feedback"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    completion_id: str = Field(min_length=1, max_length=256)
    thumbs: Literal[-1, 1] | None = None
    choice: int | None = Field(None, ge=0)
    choice_index: int = Field(0, ge=0)
    correction: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)

    @model_validator(mode="after")
    def _something_to_say(self) -> "FeedbackRequest":
        if self.thumbs is None and self.choice is None and self.correction is None and self.comment is None:
            raise ValueError("give at least one of thumbs, choice, correction, comment")
        return self


def _bad_request(message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)


def _parse(raw: bytes) -> FeedbackRequest | JSONResponse:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _bad_request("the request body must be a JSON object")
    if not isinstance(data, dict):
        return _bad_request("the request body must be a JSON object")
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        return _bad_request(f"{param}: {message}" if param else message, param)


def feedback_router(capture: "TraceCapture") -> APIRouter:
    router = APIRouter()

    @router.post(FEEDBACK_PATH, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": FeedbackRequest.model_json_schema()}}}})
    async def post_feedback(request: Request) -> JSONResponse:
        parsed = _parse(await request.body())
        if isinstance(parsed, JSONResponse):
            return parsed
        feedback = Feedback(
            id=f"fb-{uuid.uuid4().hex[:24]}", trace_id=parsed.completion_id, created_at=time.time(),
            thumbs=parsed.thumbs, choice=parsed.choice, choice_index=parsed.choice_index,
            correction=parsed.correction, comment=parsed.comment)
        try:
            outcome = await capture.record_feedback(feedback)
        except TraceNotFound:
            return JSONResponse(error_body(f"no stored completion {parsed.completion_id!r} on this node",
                                           param="completion_id", code="not_found"), status_code=404)
        except FeedbackError as exc:
            return _bad_request(str(exc), exc.param)
        return JSONResponse({"id": feedback.id, "object": "feedback", "completion_id": parsed.completion_id,
                             "created": int(feedback.created_at), "pairs": len(outcome.pairs),
                             "kto_rows": len(outcome.kto)})

    return router


def feedback_off_router() -> APIRouter:
    """POST /v1/feedback on a node that captures nothing (consent off): 400 on bad input, else 404."""
    router = APIRouter()

    @router.post(FEEDBACK_PATH, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": FeedbackRequest.model_json_schema()}}}})
    async def post_feedback_capture_off(request: Request) -> JSONResponse:
        parsed = _parse(await request.body())
        if isinstance(parsed, JSONResponse):
            return parsed
        return JSONResponse(error_body(
            f"no stored completion {parsed.completion_id!r} on this node: trace capture is off (consent off), "
            "so no completion is kept and none can take feedback", param="completion_id", code="not_found"),
            status_code=404)

    return router
