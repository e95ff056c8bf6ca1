"""`swarmloop fed deploy`: a real Flower deployment on loopback, supervised.

    flower-superlink --insecure --disable-runtime-dependency-installation --port P
    flower-supernode --insecure --superlink 127.0.0.1:P --port Q --node-config 'data-path="…" node-name="…"'
                                                                  (one per node store)
    flwr run RUN/app swarmloop --stream                          (FLWR_HOME=RUN/flwr-home)

or, with deployment.superlink set, only the `flwr run` against an existing SuperLink whose
SuperNodes were started elsewhere.

The Flower app directory: `flwr run APP_DIR` walks APP_DIR and zips its .py/.toml/.md/… files
into a FAB (flwr/cli/build.py). The repository root is a poor app dir: the walk goes through
.venv (about 64 000 files, 30 s here) and the FAB would carry a second copy of our packages that
shadows the installed ones. So each run gets a generated app dir, RUN/app, holding only a
pyproject.toml: [tool.flwr.app] as declared in the repository's pyproject.toml, components
`federation.server_app:app` / `federation.client_app:app` (imported from the installed
swarmloop package), and the run config key `config-path` = RUN/federation.json.

Every process started here runs in its own session; Flower starts more (flower-superexec,
flwr-serverapp, flwr-clientapp per message), some detached in sessions of their own. The
Supervisor keeps a record of every descendant it ever saw and, on the way out (normal end,
failure, Ctrl-C, SIGTERM), terminates process groups and stray descendants, then kills what is
left. RUN/logs/processes.json lists every pid it saw.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from federation.config import FederationConfig
from federation.runs import RunFolder, RunResult
from federation.sim import node_config, prepare_run
from swarmloop.errors import UserError

CONNECTION_NAME = "swarmloop"
APP_NAME = "swarmloop-federation"
# The same sections as [tool.flwr.app] in the repository's pyproject.toml (read from there when
# the package runs from a checkout; a test keeps the two equal).
DEFAULT_APP_SECTION: dict[str, Any] = {
    "publisher": "swarmloop",
    "components": {"serverapp": "federation.server_app:app", "clientapp": "federation.client_app:app"},
    "config": {"config-path": ""},
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def flower_bin(name: str) -> str:
    """A Flower executable next to this interpreter (the venv's bin)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise UserError(f"{name} not found next to {sys.executable}; is flwr installed in this environment?")
    return str(path)


def app_section() -> dict[str, Any]:
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
        return data["tool"]["flwr"]["app"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return DEFAULT_APP_SECTION


def write_app_dir(run: RunFolder) -> Path:
    """RUN/app/pyproject.toml: the whole FAB (see the module doc)."""
    import tomli_w  # comes with flwr, which writes FAB pyprojects with it

    section = json.loads(json.dumps(app_section()))
    section.setdefault("config", {})["config-path"] = str(run.config_path)
    pyproject = {
        "project": {
            "name": APP_NAME,
            "version": "0.1.0",
            "description": "swarmloop federated LoRA rounds (generated for one run)",
            "license": "Apache-2.0",
            # Not installed at run time (--disable-runtime-dependency-installation): the
            # components come from the swarmloop package already installed in this environment.
            "dependencies": ["flwr>=1.42,<1.43"],
        },
        "tool": {"flwr": {"app": section}},
    }
    run.app_dir.mkdir(parents=True, exist_ok=True)
    (run.app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return run.app_dir


def write_flwr_home(run: RunFolder, address: str) -> Path:
    home = run.flwr_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n[superlink.{CONNECTION_NAME}]\naddress = "{address}"\ninsecure = true\n'
    )
    return home


class Supervisor:
    """Starts processes in their own sessions, logs their output, and stops every one of them
    and every descendant seen, whatever happens."""

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, str] = {}          # every pid ever seen -> what it was
        self.started_at: dict[int, float] = {}  # pid -> its create time, so a reused pid is never signalled
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._watching = threading.Event()

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path,
              on_line: Callable[[str], None] | None = None) -> subprocess.Popen:
        log_path = self.logs_dir / f"{name}.log"
        log_file = open(log_path, "ab")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(cwd), start_new_session=True)
        self.procs[name] = proc
        with self._lock:
            self.seen[proc.pid] = name
            self.started_at[proc.pid] = _create_time(proc.pid)
        thread = threading.Thread(target=self._pump, args=(proc, log_file, on_line), daemon=True)
        thread.start()
        self._threads.append(thread)
        self.write_pids()
        return proc

    @staticmethod
    def _pump(proc: subprocess.Popen, log_file: Any, on_line: Callable[[str], None] | None) -> None:
        with log_file:
            for raw in iter(proc.stdout.readline, b""):
                log_file.write(raw)
                log_file.flush()
                if on_line is not None:
                    on_line(raw.decode(errors="replace").rstrip("\n"))

    def snapshot(self) -> None:
        """Record every live descendant of the processes we started."""
        import psutil

        found: dict[int, tuple[str, float]] = {}
        for name, proc in list(self.procs.items()):
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    found[child.pid] = (f"{name}/{child.name()}", child.create_time())
            except psutil.Error:
                continue
        with self._lock:
            for pid, (what, created) in found.items():
                if pid not in self.seen:
                    self.seen[pid] = what
                    self.started_at[pid] = created

    def watch(self, interval: float = 1.0) -> None:
        def loop() -> None:
            while not self._watching.wait(interval):
                self.snapshot()
                self.write_pids()

        threading.Thread(target=loop, daemon=True).start()

    def write_pids(self) -> None:
        with self._lock:
            data = {str(pid): what for pid, what in sorted(self.seen.items())}
        tmp = self.logs_dir / ".processes.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.logs_dir / "processes.json")

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop_all(self, grace_s: float = 8.0) -> None:
        import psutil

        self._watching.set()
        self.snapshot()
        # Terminate the groups we created, then any descendant that detached into its own session.
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        targets = []
        for pid in list(self.seen):
            try:
                process = psutil.Process(pid)
                if process.create_time() != self.started_at.get(pid):
                    continue  # that process ended and its pid now belongs to someone else
                if process.status() != psutil.STATUS_ZOMBIE:
                    targets.append(process)
                    process.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(targets, timeout=grace_s)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=3)
        for proc in self.procs.values():
            if proc.poll() is None:  # still ours (not reaped), so its group id is still ours too
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=3)  # reap our direct children
            except subprocess.TimeoutExpired:
                pass
        for thread in self._threads:
            thread.join(timeout=2)
        self.write_pids()


def _create_time(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return -1.0


def wait_healthy(host: str, port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not answer {url} within {timeout:.0f} s")


def child_env(run: RunFolder, *, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(run.flwr_home)
    # flower-superlink starts `flower-superexec` by name: the venv's bin must be on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def run_deployment(config: FederationConfig, *, progress: bool = False, verbose: bool = False,
                   on_started: Callable[[Supervisor], None] | None = None) -> RunResult:
    """Start (or join) a SuperLink with one SuperNode per node store, run the app, clean up.
    `on_started` is called once every process is up (tests use it to find the pids)."""
    from federation.logs import shown_on_console
    from federation.progress import RoundProgress
    from federation.server_app import eval_key

    deployment = config.deployment
    joining = deployment.superlink is not None
    config, run = prepare_run(config, need_stores=not joining)
    supervisor = Supervisor(run.logs_dir)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    if not config.run.resume:
        run.result_path.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        with RoundProgress(run.metrics_path, config.rounds, eval_key(config.method), enabled=progress) as bar:
            if joining:
                address = deployment.superlink
            else:
                address = _start_local_federation(config, run, supervisor)
            write_flwr_home(run, address)
            app_dir = write_app_dir(run)
            supervisor.watch()
            if on_started is not None:
                on_started(supervisor)
            def show(line: str) -> None:
                if verbose or shown_on_console(line):
                    bar.console_print(line[:300])

            flwr_run = supervisor.start(
                "flwr-run", [flower_bin("flwr"), "run", str(app_dir), CONNECTION_NAME, "--stream"],
                env=child_env(run), cwd=run.root, on_line=show,
            )
            _wait_for_run(flwr_run, supervisor, deployment.run_timeout_s, started, joining, run)
    except (KeyboardInterrupt, _Terminated):
        raise KeyboardInterrupt("federated deployment interrupted; every process it started was stopped") from None
    finally:
        supervisor.stop_all()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if not run.result_path.is_file():
        raise RuntimeError(f"the deployment ended without a result{_last_error(run)}; see {run.logs_dir}/flwr-run.log")
    result = RunResult.load(run.result_path)
    return result.model_copy(update={"mode": "deployment"})


def _last_error(run: RunFolder) -> str:
    """The last exception line the ServerApp logged, to put in the error message."""
    try:
        lines = (run.logs_dir / "flwr-run.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if line[:1] not in (" ", "\t") and ("Error:" in line or "Exception:" in line)]
    return f" ({errors[-1][:300]})" if errors else ""


def _start_local_federation(config: FederationConfig, run: RunFolder, supervisor: Supervisor) -> str:
    deployment = config.deployment
    host = deployment.host
    port = deployment.superlink_port or free_port(host)
    superlink = supervisor.start(
        "superlink",
        [flower_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
         "--host", host, "--port", str(port)],
        env=child_env(run), cwd=run.root,
    )
    wait_healthy(host, port, deployment.startup_timeout_s, superlink)
    from federation.protocol import node_config_args

    threads = deployment.threads_per_node or max(1, (os.cpu_count() or 1) // len(config.nodes))
    for index, node in enumerate(config.nodes):
        node_port = deployment.supernode_base_port + index if deployment.supernode_base_port else free_port(host)
        values = {"partition-id": index, "num-partitions": len(config.nodes), **node_config(node)}
        supervisor.start(
            f"supernode-{node.name}",
            [flower_bin("flower-supernode"), "--insecure", "--superlink", f"{host}:{port}",
             "--host", host, "--port", str(node_port), "--node-config", node_config_args(values)],
            env=child_env(run, threads=threads), cwd=run.root,
        )
    return f"{host}:{port}"


def _wait_for_run(flwr_run: subprocess.Popen, supervisor: Supervisor, run_timeout: float | None, started: float,
                  joining: bool, run: RunFolder) -> None:
    while flwr_run.poll() is None:
        if not joining and not supervisor.alive("superlink"):
            raise RuntimeError(f"flower-superlink died during the run; see {run.logs_dir / 'superlink.log'}")
        if run_timeout is not None and time.monotonic() - started > run_timeout:
            raise RuntimeError(f"the run took longer than deployment.run_timeout_s = {run_timeout:.0f} s; stopped")
        time.sleep(0.5)
