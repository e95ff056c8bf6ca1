"""Start and stop real `swarmloop node serve` subprocesses on loopback.

The loop conductor starts its nodes with this, and so do the tests (tests/node_process.py
re-exports it):

    from swarmloop.node_process import start_node

    with start_node("tiny-random", limits={"max_tokens_cap": 64}) as node:
        client = node.client()                  # openai.OpenAI pointed at the node
        client.chat.completions.create(model=node.model, messages=[...])
        node.metrics()                          # /metrics text
        node.log_text()                         # everything the process printed so far

start_node returns once /health is 200 (wait_ready=False returns as soon as the process runs).
The node's stdout+stderr go to a log file in its own temp folder (node.workdir). stop() sends
SIGTERM and waits; the context manager always stops (and, if need be, kills) the process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML for a config dict: scalars at the top, one level of [tables]."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for table, body in data.items():
        if isinstance(body, dict):
            lines.append(f"\n[{table}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in body.items())
    return "\n".join(lines) + "\n"


class NodeProcess:
    def __init__(self, proc: subprocess.Popen, port: int, model: str, workdir: Path, log_path: Path,
                 name: str = "node", store: Path | None = None):
        self.name = name
        self.store = store
        self.proc = proc
        self.port = port
        self.model = model
        self.workdir = workdir
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"

    # -- talking to it --
    def client(self, **kwargs: Any):
        """The official openai client; max_retries=0 so a test sees every error as it is."""
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", **kwargs)

    def async_client(self, **kwargs: Any):
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.base_url + path, timeout=kwargs.pop("timeout", 120), **kwargs)

    def health(self) -> int:
        return self.get("/health").status_code

    def metrics(self) -> str:
        return self.get("/metrics").text

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample in /metrics, e.g. metric("swarmloop_batch_size_count")."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        raise KeyError(wanted)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle --
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"node did not listen within {timeout}s:\n{self.log_text()[-3000:]}")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        self.wait_listening(timeout)
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if self.health() == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"node not healthy within {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for a clean exit; SIGKILL if it does not come. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_node(
    model: str | None = "tiny-random",
    *,
    port: int | None = None,
    limits: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    store: Path | None = None,
    consent: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    wait_ready: bool = True,
    ready_timeout: float = 180,
    name: str = "node",
) -> NodeProcess:
    """Start `swarmloop node serve` on 127.0.0.1 with a free port.

    `config` is a NodeConfig-shaped dict written to workdir/node.toml (here model.dtype defaults
    to float32 and model.threads to 1); `limits` is merged into its [limits] table. model=None
    passes no --model (a node with a registry then starts on the registry's latest); node.model is
    then the config's model.ref, which stays a valid model name for requests."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="swarmloop-node-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    data: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value for key, value in (config or {}).items()}
    data.setdefault("model", {}).setdefault("dtype", "float32")
    # one torch thread: on a 2-core machine shared with other test processes, two threads that
    # wait on each other make every small op of a tiny model ten times slower
    data["model"].setdefault("threads", 1)
    if limits:
        data.setdefault("limits", {}).update(limits)
    config_path = workdir / "node.toml"
    config_path.write_text(to_toml(data))
    args = [sys.executable, "-m", "swarmloop.cli", "node", "serve", "--config", str(config_path),
            "--host", "127.0.0.1", "--port", str(port)]
    if model is not None:
        args += ["--model", model]
    if store is not None:
        args += ["--store", str(store)]
    if consent is not None:
        args += ["--consent", consent]
    args += list(extra_args or [])
    log_path = workdir / "node.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C in the terminal reaches the conductor, which stops the node cleanly.
        proc = subprocess.Popen(args, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    node = NodeProcess(proc, port, model or data["model"].get("ref", "embedded:smollm2-135m-instruct"), workdir,
                       log_path, name=name, store=store or (Path(data["store"]) if data.get("store") else None))
    try:
        if wait_ready:
            node.wait_ready(ready_timeout)
    except BaseException:
        node.stop()
        raise
    return node
