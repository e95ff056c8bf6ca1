"""Real Flower deployments on loopback: flower-superlink + one flower-supernode process per node
store, `flwr run` with runtime dependency installation disabled, supervised and cleaned up."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from fed_helpers import base_config, fill_store, pid_gone

from federation.config import FederationConfig


def _processes(run_dir) -> dict[int, str]:
    return {int(pid): what for pid, what in json.loads((run_dir / "logs" / "processes.json").read_text()).items()}


def test_deployment_one_round_then_every_process_is_gone(tmp_path):
    from federation.deploy import run_deployment
    from training.manifest import verify_folder

    stores = [("node-a", fill_store(tmp_path / "a.db", "node-a", 8)),
              ("node-b", fill_store(tmp_path / "b.db", "node-b", 8))]
    config = FederationConfig.model_validate(base_config(tmp_path, stores, rounds=1))

    result = run_deployment(config)

    assert result.mode == "deployment" and result.version == "v0001"
    manifest = verify_folder(result.published)
    assert manifest.training.examples_by_node == {"node-a": 8, "node-b": 8}
    assert {n for n, i in result.history[1]["nodes"].items() if i["status"] == "used"} == {"node-a", "node-b"}
    # the generated app dir holds nothing but its pyproject (the FAB is that one file)
    assert [p.name for p in (result.run_dir / "app").iterdir()] == ["pyproject.toml"]
    seen = _processes(result.run_dir)
    kinds = set(seen.values())
    assert {"superlink", "supernode-node-a", "supernode-node-b", "flwr-run"} <= kinds
    assert any("flwr-serverapp" in k for k in kinds) and any("flwr-clientapp" in k for k in kinds)
    assert [pid for pid in seen if not pid_gone(pid)] == []


def test_killed_supernode_the_run_finishes_with_the_other(tmp_path):
    from federation.deploy import run_deployment

    stores = [("node-a", fill_store(tmp_path / "a.db", "node-a", 8)),
              ("node-b", fill_store(tmp_path / "b.db", "node-b", 8))]
    # A round waits at most 45 s for a reply; the dead node must not hold the run longer.
    config = FederationConfig.model_validate(
        base_config(tmp_path, stores, rounds=1, strategy={"round_timeout_s": 45, "min_nodes": 1}))
    killed = threading.Event()

    def kill_node_b_once_round_one_starts(supervisor) -> None:
        log = supervisor.logs_dir / "flwr-run.log"

        def watch() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if log.is_file() and "configure_train" in log.read_text(errors="replace"):
                    os.killpg(supervisor.procs["supernode-node-b"].pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()

    started = time.monotonic()
    result = run_deployment(config, on_started=kill_node_b_once_round_one_starts)

    assert killed.is_set()
    assert result.version == "v0001" and result.rounds == 1
    round_one = result.history[1]
    assert round_one["aggregated"] and set(round_one["nodes"]) == {"node-a"}
    assert round_one["bytes"]["messages_down"] == 2 and round_one["bytes"]["replies_up"] == 1
    assert time.monotonic() - started < 300
    assert [pid for pid in _processes(result.run_dir) if not pid_gone(pid)] == []
