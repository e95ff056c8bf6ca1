"""The node's admin endpoints for hot-swap redeploy.

    POST /admin/reload   {"version": "v0002"?, "wait": true?}   bearer token required
    GET  /admin/status   what is served, the last swap and the last refusal (read-only, no token)

POST /admin/reload exists only when an admin token is configured ([redeploy] admin_token, or the
environment variable named by admin_token_env, or `node serve --admin-token`); otherwise it is a
404 like any unknown path. A missing or wrong token is a 401 in the OpenAI error shape.

Reload answers (wait=true, the default, returns when the attempt is over):
    200 {"status": "swapped"|"unchanged", "version", "serving", "pause_s", ...}
    202 {"status": "accepted", "version"}          wait=false: the attempt runs in the background
    422 checkpoint_refused | checkpoint_rolled_back  the node keeps serving the old version
    404 version_not_found, 409 no_registry, 503 registry_unavailable | model_not_loaded, 400 bad body
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from inference.config import RedeployConfig
from inference.hotswap import Redeployer, ReloadOutcome, RedeployStatus
from inference.hotswap_sources import SourceError
from inference.openai_schemas import error_body
from training.registry import RegistryError, normalize_version


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = None      # default: the registry's latest
    wait: bool = True               # false: answer 202 at once and reload in the background


def resolve_admin_token(config: RedeployConfig) -> str | None:
    """The configured token, else the one in the named environment variable; None disables reload."""
    if config.admin_token:
        return config.admin_token
    if config.admin_token_env:
        return os.environ.get(config.admin_token_env) or None
    return None


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error",
           param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


def _outcome_response(outcome: ReloadOutcome) -> JSONResponse:
    if outcome.status in ("swapped", "unchanged"):
        return JSONResponse(outcome.model_dump(), status_code=200)
    if outcome.status in ("refused", "rolled_back"):
        what = "refused" if outcome.status == "refused" else "rolled back"
        message = (f"{outcome.version} {what} at {outcome.stage}: {outcome.reason}; "
                   f"serving {outcome.serving or 'the previous model'}")
        return _error(422, message, f"checkpoint_{outcome.status}")
    if outcome.status == "not_found":
        return _error(404, outcome.reason or "no such version", "version_not_found", param="version")
    return _error(503, outcome.reason or "the registry is unavailable", "registry_unavailable", "service_unavailable")


def admin_router(redeployer: Redeployer, token: str | None) -> APIRouter:
    router = APIRouter()

    @router.get("/admin/status", response_model=RedeployStatus)
    async def admin_status():
        return redeployer.status()

    if token is None:
        return router  # reload disabled: POST /admin/reload is a plain 404

    @router.post("/admin/reload", response_model=ReloadOutcome)
    async def admin_reload(request: Request):
        if not _authorized(request, token):
            return _error(401, "Incorrect or missing admin token (send Authorization: Bearer TOKEN)",
                          "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _error(400, "the request body is not valid JSON", "invalid_value")
        try:
            body = ReloadRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(part) for part in first["loc"]) or None
            message = f"{param}: {first['msg']}" if param else str(first["msg"])
            return _error(400, message, "invalid_value", param=param)
        try:
            version = normalize_version(body.version) if body.version is not None else None
        except RegistryError as exc:
            return _error(400, str(exc), "invalid_value", param="version")
        if redeployer.source is None:
            return _error(409, "this node follows no registry (set [redeploy] registry or --registry)", "no_registry")
        if redeployer.state.engine is None:
            return _error(503, f"the node is {redeployer.state.status}", "model_not_loaded", "service_unavailable")
        if not body.wait:
            threading.Thread(target=_reload_quietly, args=(redeployer, version), name="swarmloop-reload",
                             daemon=True).start()
            return JSONResponse({"status": "accepted", "version": version or "latest"}, status_code=202)
        try:
            outcome = await asyncio.to_thread(redeployer.reload, version)
        except SourceError as exc:
            return _error(409, str(exc), "no_registry")
        return _outcome_response(outcome)

    return router


def _reload_quietly(redeployer: Redeployer, version: str | None) -> None:
    import logging

    try:
        redeployer.reload(version)  # the outcome lands in /admin/status and the log
    except Exception as exc:
        logging.getLogger("swarmloop.redeploy").error("background reload failed: %s", exc.__class__.__name__)
