"""Client side of hot-swap redeploy, for the loop conductor and scripts (torch-free, httpx only).

    reload_node("http://127.0.0.1:8001", token, "v0002")          # POST /admin/reload, wait for the outcome
    wait_until_serving("http://127.0.0.1:8001", "v0002", timeout_s=300)   # a node that polls on its own

Both return the node's /admin/status (a dict) once it serves the version, and raise
CheckpointRefusedByNode (with the node's reason) when it refused that version instead.
"""

from __future__ import annotations

import time
from typing import Any

import httpx


class CheckpointRefusedByNode(RuntimeError):
    def __init__(self, version: str, stage: str, reason: str):
        super().__init__(f"the node refused {version} at {stage}: {reason}")
        self.version, self.stage, self.reason = version, stage, reason


def node_status(base_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    response = httpx.get(base_url.rstrip("/") + "/admin/status", timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def wait_until_serving(base_url: str, version: str, *, timeout_s: float = 300.0, interval_s: float = 0.25,
                       since: str | None = None) -> dict[str, Any]:
    """Poll /admin/status until the node serves `version` for good (its attempt, with the post-swap
    health check, is over); raise CheckpointRefusedByNode as soon as
    the node reports a refusal of `version` (only those at or after `since`, an ISO time, if given)
    and TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = node_status(base_url)
        except httpx.HTTPError:
            status = None  # still starting, or busy: ask again
        if status is not None:
            serving = status.get("serving") or {}
            if serving.get("version") == version and status.get("reloading") != version:
                return status  # served, and past the post-swap health check (which could still roll back)
            for refusal in [status.get("last_refusal") or {}, *status.get("refused", [])]:
                if refusal.get("version") == version and (since is None or refusal.get("at", "") >= since):
                    raise CheckpointRefusedByNode(version, refusal.get("stage", "?"), refusal.get("reason", "?"))
        if time.monotonic() > deadline:
            served = (status or {}).get("serving") or {}
            raise TimeoutError(f"{base_url} still serves {served.get('version', 'nothing')} after {timeout_s:g} s, "
                               f"not {version}")
        time.sleep(interval_s)


def reload_node(base_url: str, token: str, version: str | None = None, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """POST /admin/reload and wait for the attempt; the status once it serves the version."""
    response = httpx.post(base_url.rstrip("/") + "/admin/reload", json={"version": version} if version else {},
                          headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
    if response.status_code == 422:
        status = node_status(base_url)
        refusal = status.get("last_refusal") or {}
        raise CheckpointRefusedByNode(refusal.get("version", version or "latest"), refusal.get("stage", "?"),
                                      refusal.get("reason", response.json()["error"]["message"]))
    if response.status_code != 200:
        raise RuntimeError(f"{base_url}/admin/reload answered {response.status_code}: "
                           f"{response.json().get('error', {}).get('message', response.text[:200])}")
    return node_status(base_url)
