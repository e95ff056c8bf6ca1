"""Batch jobs in the OpenAI Batch format: mixed good and bad lines, resume after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from inference.batch import run_batch
from inference.config import LimitsConfig, NodeConfig
from tests.inference.openai_checks import assert_openai_error
from tests.node_process import REPO_ROOT, to_toml


def request_line(custom_id: str, content: str = "hello", **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "tiny-random", "messages": [{"role": "user", "content": content}],
                                "max_tokens": 8, **body}})


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


MIXED = [
    request_line("good-1", seed=1),
    request_line("good-2", n=2, seed=2),
    "{this is not json",
    json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
    request_line("good-1", seed=9),                                   # duplicate custom_id
    request_line("wrong-url").replace("/v1/chat/completions", "/v1/embeddings"),
    request_line("wrong-method").replace('"POST"', '"GET"'),
    request_line("bad-body", max_tokens="eight"),
    request_line("unknown-model").replace('"tiny-random"', '"gpt-4o"'),
    request_line("too-many-n", n=99),
    request_line("streaming", stream=True),
    "",
    request_line("good-3", content="naïve café 日本", seed=3),
    request_line("surrogate", content="a\ud800b"),                    # json.dumps writes "a\\ud800b"
    request_line("id-\udc00", seed=5),                                  # a lone surrogate in the custom_id
]
NEVER_A_REQUEST = {"invalid_json", "missing_custom_id", "duplicate_custom_id", "invalid_line"}


def assert_batch_format(entries: list[dict]) -> None:
    """OpenAI Batch output: an answered request has `response` and error null; `error` (with the
    line number) only for lines that never became a request."""
    for entry in entries:
        assert entry["id"].startswith("batch_req_")
        if entry["error"] is None:
            assert set(entry["response"]) == {"status_code", "request_id", "body"}
            if entry["response"]["status_code"] >= 400:
                assert_openai_error(entry["response"]["body"])
        else:
            assert entry["response"] is None
            assert entry["error"]["code"] in NEVER_A_REQUEST and isinstance(entry["error"]["line"], int)


def test_mixed_lines_then_resume_and_torn_tail(tmp_path, tiny_loaded):
    config = NodeConfig(model={"ref": "tiny-random", "dtype": "float32"}, limits=LimitsConfig(max_n=4))
    in_path, out_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    in_path.write_text("\n".join(MIXED) + "\n")
    summary = run_batch(in_path, out_path, config, loaded=tiny_loaded)
    assert (summary.succeeded, summary.failed, summary.skipped) == (4, 10, 0)
    entries = read_out(out_path)
    assert_batch_format(entries)
    by_id = {e["custom_id"]: e for e in entries if e["custom_id"] and not (e["error"] or {}).get("line")}
    for good in ("good-1", "good-2", "good-3", "id-\udc00"):
        entry = by_id[good]
        assert entry["error"] is None
        assert entry["response"]["status_code"] == 200
        body = entry["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0
    assert len(by_id["good-2"]["response"]["body"]["choices"]) == 2
    error_of = {cid: (e["response"]["status_code"], e["response"]["body"]["error"]) for cid, e in by_id.items()
                if e["response"]["status_code"] != 200}
    assert error_of["wrong-url"][0] == 400 and error_of["wrong-url"][1]["code"] == "invalid_url"
    assert error_of["wrong-method"][0] == 400 and error_of["wrong-method"][1]["code"] == "invalid_method"
    assert error_of["surrogate"][0] == 400 and error_of["surrogate"][1]["param"] == "messages.0.content"
    assert by_id["bad-body"]["response"]["status_code"] == 400
    assert by_id["bad-body"]["response"]["body"]["error"]["param"] == "max_tokens"
    assert by_id["unknown-model"]["response"]["status_code"] == 404
    assert by_id["too-many-n"]["response"]["body"]["error"]["param"] == "n"
    assert by_id["streaming"]["response"]["status_code"] == 400
    line_errors = {e["error"]["line"]: e["error"]["code"] for e in entries if (e["error"] or {}).get("line")}
    assert line_errors == {3: "invalid_json", 4: "missing_custom_id", 5: "duplicate_custom_id"}

    # a re-run finds everything done and writes nothing
    again = run_batch(in_path, out_path, config, loaded=tiny_loaded)
    assert (again.succeeded, again.failed, again.skipped) == (0, 0, 14)
    assert len(read_out(out_path)) == len(entries)

    # a crash mid-write left half a line; new work was appended to IN
    with open(out_path, "a") as handle:
        handle.write('{"id": "batch_req_torn", "custom_id": "good-4", "respo')
    with open(in_path, "a") as handle:
        handle.write(request_line("good-4", seed=4) + "\n")
    resumed = run_batch(in_path, out_path, config, loaded=tiny_loaded)
    assert resumed.repaired_tail and resumed.succeeded == 1
    final = read_out(out_path)  # every line parses again
    ids = Counter(e["custom_id"] for e in final if not (e["error"] or {}).get("line"))
    assert all(count == 1 for count in ids.values())
    assert "good-4" in ids


def test_cli_batch_killed_part_way_resumes_each_custom_id_exactly_once(tmp_path):
    in_path, out_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [f"req-{k:03d}" for k in range(32)]
    lines = [request_line(cid, content=f"question {cid}", max_tokens=32, seed=k) for k, cid in enumerate(good)]
    lines[5:5] = ["not json at all", request_line("req-000")]  # a bad line and a duplicate in the middle
    in_path.write_text("\n".join(lines) + "\n")
    config = tmp_path / "node.toml"
    config.write_text(to_toml({"model": {"dtype": "float32", "threads": 1}}))
    command = [sys.executable, "-m", "swarmloop.cli", "node", "batch", str(in_path), str(out_path),
               "--model", "tiny-random", "--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not out_path.exists() or len(out_path.read_text().splitlines()) < 2 + 6:
        assert first.poll() is None, first.stdout.read().decode()
        assert time.monotonic() < deadline, "the batch never produced results"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    interrupted = read_out(out_path)
    assert len(interrupted) < len(lines)  # it really was cut short

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "already done" in second.stderr
    final = read_out(out_path)
    successes = Counter(e["custom_id"] for e in final if e["error"] is None)
    assert sorted(successes) == good
    assert set(successes.values()) == {1}
    errors = sorted(e["error"]["code"] for e in final if e["error"] is not None)
    assert errors == ["duplicate_custom_id", "invalid_json"]
    assert len(final) == len(lines)


# A chat template with two traps, as real templates have: raise_exception() on a message it refuses
# (a 400: the caller's messages), and a bug that raises TypeError on another (a 500 for that line).
TRAP_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] == 'refuse me' -%}{{ raise_exception('this template refuses that message') }}{%- endif -%}"
    "{%- if message['content'] == 'break me' -%}{{ message['content'] + 1 }}{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


@pytest.fixture(scope="module")
def trap_model(tiny_model_path, tmp_path_factory) -> Path:
    from inference.loading import load_model

    folder = tmp_path_factory.mktemp("trap") / "tiny-trap"
    loaded = load_model("tiny-random")
    loaded.tokenizer.chat_template = TRAP_TEMPLATE
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def test_cli_batch_reports_each_unpreparable_line_and_runs_the_rest(tmp_path, trap_model):
    def line(custom_id: str, content: str) -> str:
        return request_line(custom_id, content=content, seed=1).replace('"tiny-random"', '"tiny-trap"')

    lines = [line("good-1", "hello"), line("surrogate", "a\ud800b"), line("refused", "refuse me"),
             line("broken", "break me"), line("id-\ud800", "fine"), line("good-2", "hello again")]
    in_path, out_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    in_path.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "swarmloop.cli", "node", "batch", str(in_path), str(out_path),
               "--model", str(trap_model)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "3 succeeded, 3 errors" in first.stderr
    entries = read_out(out_path)
    assert_batch_format(entries)
    status = {e["custom_id"]: e["response"]["status_code"] for e in entries}
    assert status == {"good-1": 200, "surrogate": 400, "refused": 400, "broken": 500, "id-\ud800": 200, "good-2": 200}
    errors = {e["custom_id"]: e["response"]["body"]["error"] for e in entries if e["response"]["status_code"] != 200}
    assert errors["surrogate"]["param"] == "messages.0.content"
    assert errors["refused"]["param"] == "messages" and "refuses that message" in errors["refused"]["message"]
    assert errors["broken"]["type"] == "server_error" and "TypeError" in errors["broken"]["message"]

    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 succeeded, 0 errors, 6 already done" in again.stderr  # the surrogate custom_id too
    assert len(read_out(out_path)) == len(lines)


class FailingHook:
    """A capture hook (the CaptureHook protocol) that fails on every other completion."""

    def __init__(self) -> None:
        self.calls = 0

    def on_completion(self, record) -> None:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError(f"store unavailable for {record.completion_id}")

    def routes(self) -> list:
        return []

    def close(self) -> None:
        pass


def test_a_failing_capture_hook_never_stops_the_batch(tmp_path, tiny_loaded):
    config = NodeConfig(model={"ref": "tiny-random", "dtype": "float32"})
    in_path, out_path = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    in_path.write_text("\n".join(request_line(f"req-{k}", seed=k) for k in range(5)) + "\n")
    hook = FailingHook()
    summary = run_batch(in_path, out_path, config, loaded=tiny_loaded, capture_hook=hook)
    assert (summary.succeeded, summary.failed, summary.capture_errors) == (5, 0, 3)
    assert hook.calls == 5
    assert [e["response"]["status_code"] for e in read_out(out_path)] == [200] * 5
