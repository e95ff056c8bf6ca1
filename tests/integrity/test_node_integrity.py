"""A real node (uvicorn, tiny-random, consent local) signs what it stores and proves what it served:
every trace and feedback record in its SQLite store verifies against the public key it reports,
an alteration in the file does not, and its activation proofs pass the verifier on the same model
and fail on an altered reply or another model."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.ingest import VerifierModels, render_prompt_ids, verify_trace_proofs
from inference.proofs import ActivationProof, verify_proofs
from inference.proofs_serving import reencoded_reply_ids
from integrity_helpers import alter_one_token
from tests.node_process import REPO_ROOT, start_node
from traces.schemas import PROOF_REDACTED
from traces.signing import TrustedKeys, TrustedKeysFile, public_key_from_b64, verify_record
from traces.store import TraceStore
from traces.verify import proof_entries, unverifiable_reason, verify_store

NAME = "node-a"
MAX_TOKENS = 40                     # prompt chunk + 32 + a short chunk: every layout case


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarmloop.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_stored(db: Path, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with TraceStore(db, readonly=True) as store:
                if all(store.has_trace(i) for i in ids):
                    return
        time.sleep(0.1)
    raise TimeoutError(f"traces not stored within {timeout} s")



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One node serving a mix of requests, then stopped: its store, its key, what it answered."""
    root = tmp_path_factory.mktemp("signed-node")
    db = root / "traces.db"
    # tiny-random writes random tokens, which can look like a high-entropy secret: only e-mail
    # addresses are redacted here, so exactly the trace that holds one is redacted
    node = start_node("tiny-random", workdir=root / "w", limits={"max_tokens_cap": 64},
                      config={"store": str(db), "consent": "local", "node_id": NAME, "privacy": {"types": ["EMAIL"]}})
    with node:
        identity = node.get("/admin/identity").json()
        client = node.client()

        def ask(content: str, **kwargs):
            return client.chat.completions.create(model=node.model, messages=[{"role": "user", "content": content}],
                                                  max_tokens=MAX_TOKENS, temperature=1.0, **kwargs)

        plain = ask("Tell me something about the sea.", seed=1)
        text = plain.choices[0].message.content
        cut = text[len(text) // 2: len(text) // 2 + 3]          # same seed, same tokens: this stop string is hit
        stopped = ask("Tell me something about the sea.", seed=1, stop=[cut])
        two = ask("Two ways to say hello?", n=2, seed=2)
        stream = client.chat.completions.create(model=node.model, stream=True, max_tokens=12, seed=3,
                                                messages=[{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Stream it."}])
        streamed_id = next(iter(stream)).id
        list(stream)
        private = ask("Write to zelda.quux@example.org about the meeting.", seed=4)
        opted_out = client.chat.completions.create(model=node.model, max_tokens=4, extra_headers={"X-Swarmloop-Trace": "off"},
                                                   messages=[{"role": "user", "content": "forget me 77qq"}])
        assert node.post("/v1/feedback", json={"completion_id": plain.id, "thumbs": 1}).status_code == 200
        assert node.post("/v1/feedback", json={"completion_id": two.id, "choice": 1}).status_code == 200
        assert node.post("/v1/feedback", json={"completion_id": two.id, "choice_index": 0,
                                               "correction": "Hi! Or: hello."}).status_code == 200
        ids = {"plain": plain.id, "stopped": stopped.id, "two": two.id, "streamed": streamed_id, "private": private.id}
        wait_stored(db, list(ids.values()))
        key_line = run_cli("node", "key", "--config", str(node.workdir / "node.toml"), cwd=node.workdir)
        assert node.stop() == 0
    return {"db": db, "identity": identity, "ids": ids, "replies": {"plain": plain, "stopped": stopped, "two": two},
            "key_line": key_line, "opted_out": opted_out.id, "workdir": root / "w"}


@pytest.fixture(scope="module")
def trusted(served) -> TrustedKeys:
    """The allow-list an operator builds from `swarmloop node key` (what a federation reads)."""
    result = served["key_line"]
    assert result.returncode == 0, result.stderr
    return TrustedKeys(TrustedKeysFile.model_validate({"keys": _toml("[keys]\n" + result.stdout)["keys"]}).keys)


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def traces_of(db: Path) -> dict:
    with TraceStore(db, readonly=True) as store:
        return {t.id: t for t in store.iter_traces()}


# ------------------------------------------------------------------------------ identity and keys


def test_node_reports_its_key_and_keeps_it_private(served, trusted):
    identity = served["identity"]
    key_file = served["db"].with_name("traces.key")             # default: next to the store
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert identity["name"] == NAME and identity["node_id"].startswith("node-") and identity["signing"]
    assert identity["proofs"] is True
    assert served["key_line"].stdout.strip() == identity["trusted_keys_line"]
    assert f"node id {identity['node_id']}" in served["key_line"].stderr
    assert trusted.by_node_id(identity["node_id"])[0] == NAME
    assert public_key_from_b64(identity["public_key"]) is not None
    with TraceStore(served["db"], readonly=True) as store:
        assert store.get_meta("node_id") == identity["node_id"] and store.get_meta("node_name") == NAME
        assert store.get_meta("node_public_key") == identity["public_key"]


def test_world_readable_key_is_refused_in_one_line(tmp_path):
    key = tmp_path / "node.key"
    created = run_cli("node", "key", "--key-path", str(key))
    assert created.returncode == 0 and stat.S_IMODE(key.stat().st_mode) == 0o600
    os.chmod(key, 0o644)
    config = tmp_path / "node.toml"
    config.write_text(f'[identity]\nkey_path = "{key}"\n')
    for args in (["node", "serve", "--config", str(config), "--model", "tiny-random"], ["node", "key", "--config", str(config)]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "permissions 0644 are too open" in lines[0] and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------- signatures


def test_every_stored_trace_and_feedback_verifies_against_the_node_key(served, trusted):
    node_id = served["identity"]["node_id"]
    traces = traces_of(served["db"])
    assert set(served["ids"].values()) <= set(traces) and served["opted_out"] not in traces
    assert all(t.node_id == node_id and t.signer == node_id and t.signature for t in traces.values())
    with TraceStore(served["db"], readonly=True) as store:
        feedback = list(store.iter_feedback())
        sft = verify_store(store, "sft", trusted, expected_signer=NAME)
        dpo = verify_store(store, "dpo", trusted, expected_signer=NAME)
    assert len(feedback) == 3 and all(f.signer == node_id for f in feedback)
    assert (sft.traces, sft.feedback, sft.verified, sft.unsigned) == (len(traces), 3, len(traces) + 3, 0)
    assert not sft.failed(require_signatures=True), sft.reason(True)
    assert dpo.derived >= 2 and not dpo.failed(require_signatures=True), dpo.reason(True)
    # the signature binds the weights: the same trace claimed for other weights does not verify
    trace = traces[served["ids"]["plain"]]
    claimed = trace.model_copy(update={"model": trace.model.model_copy(update={"weights_sha256": "0" * 64})})
    with pytest.raises(Exception, match="does not match"):
        verify_record(claimed, trusted)


def _rewrite(db: Path, table: str, seq: int, change) -> None:
    """Alter one record inside the SQLite file, as someone with the file would."""
    with TraceStore(db, readonly=True) as store:
        codec = store.codec
        with sqlite3.connect(db) as raw:
            dict_id, payload = raw.execute(f"SELECT dict, payload FROM {table} WHERE seq = ?", (seq,)).fetchone()
            data = change(codec.decompress(payload, dict_id))
            raw.execute(f"UPDATE {table} SET payload = ? WHERE seq = ?", (codec.compress(data, dict_id), seq))


def test_a_record_altered_in_the_sqlite_file_fails(served, trusted, tmp_path):
    reply = served["replies"]["plain"].choices[0].message.content
    for table, change, expected in [
        ("traces", lambda raw: raw.replace(reply[:8].encode(), reply[:8].upper().encode(), 1), "traces"),
        ("feedback", lambda raw: raw.replace(b'"thumbs":1', b'"thumbs":-1'), "feedback"),
    ]:
        copy = tmp_path / f"{table}.db"
        shutil.copy(served["db"], copy)
        with sqlite3.connect(copy) as raw:
            seq = raw.execute(f"SELECT min(seq) FROM {table}").fetchone()[0]
        assert reply[:8] != reply[:8].upper()
        _rewrite(copy, table, seq, change)
        with TraceStore(copy, readonly=True) as store:
            report = verify_store(store, "sft", trusted, expected_signer=NAME)
        assert report.bad_signature == 1 and report.failed(require_signatures=False), expected
        assert "altered after signing" in report.reason(False)


# ------------------------------------------------------------------------------------------ proofs


def _verifiable(served) -> list:
    traces = traces_of(served["db"])
    return [traces[served["ids"][k]] for k in ("plain", "stopped", "two", "streamed")]


def _ids_of(tokenizer, trace, entry, proof: ActivationProof) -> tuple[list[int], list[int]]:
    """prompt and reply ids as a verifier rebuilds them from the stored trace."""
    choice = trace.choices[entry.choice_index]
    prompt = entry.prompt_ids if entry.prompt_ids is not None else render_prompt_ids(tokenizer, trace.prompt)
    reply = entry.reply_ids if entry.reply_ids is not None else reencoded_reply_ids(
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, choice.text,
        choice.finish_reason, len(prompt), proof.positions)
    return prompt, reply


def test_served_traces_carry_proofs_that_verify_on_the_same_model(served, tiny):
    traces = _verifiable(served)
    models = VerifierModels(base_model=tiny.model, tokenizer=tiny.tokenizer, base_ref="tiny-random",
                            base_sha256=traces[0].model.weights_sha256)
    for trace in traces:
        entries = proof_entries(trace)
        assert sorted(e.choice_index for e in entries) == list(range(len(trace.choices)))
        assert unverifiable_reason(trace) is None
        for entry in entries:
            proof = ActivationProof.from_dict(entry.proof)
            prompt, reply = _ids_of(tiny.tokenizer, trace, entry, proof)
            assert proof.positions == len(prompt) + len(reply)     # the engine feeds the last token too
            result = verify_proofs(tiny.model, prompt, reply, proof)
            assert result.accepted, result.reason
            if entry.reply_ids is not None:                        # stored only when the text cannot give them back
                choice = trace.choices[entry.choice_index]
                assert reencoded_reply_ids(lambda t: tiny.tokenizer(t, add_special_tokens=False)["input_ids"],
                                           tiny.tokenizer.eos_token_id, choice.text, choice.finish_reason,
                                           len(prompt), proof.positions) != entry.reply_ids
        outcome = verify_trace_proofs(trace, models)               # what federated ingest runs
        assert outcome.status == "passed", outcome.reason
    stopped = traces[1]
    assert stopped.choices[0].finish_reason == "stop" and "reply_ids" in stopped.proofs[0]   # text cut by the stop string


@pytest.fixture(scope="module")
def tiny_v1(tiny):
    """Another model a node could pass off as tiny-random: its weights moved by 0.1 % (same tokenizer)."""
    import copy

    import torch

    other = copy.deepcopy(tiny.model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * param.std() * 1e-3)
    return other


def test_altered_reply_token_or_another_model_is_rejected(served, tiny, tiny_v1):
    rng = random.Random(0)
    for trace in _verifiable(served):
        entry = proof_entries(trace)[0]
        proof = ActivationProof.from_dict(entry.proof)
        prompt, reply = _ids_of(tiny.tokenizer, trace, entry, proof)
        altered = alter_one_token(reply, rng.randrange(len(reply)), len(tiny.tokenizer), rng)
        assert "does not match" in verify_proofs(tiny.model, prompt, altered, proof).reason
        # the trace claims weights it was not served by: the verifier runs the claimed ones
        other = verify_proofs(tiny_v1, prompt, reply, proof)
        assert not other.accepted and "does not match" in other.reason
        models = VerifierModels(base_model=tiny_v1, tokenizer=tiny.tokenizer, base_ref="tiny-v1",
                                base_sha256=trace.model.weights_sha256)
        assert verify_trace_proofs(trace, models).status == "failed"


def test_redacted_traces_keep_no_proof_and_no_ids(served):
    trace = traces_of(served["db"])[served["ids"]["private"]]
    assert trace.redaction.redacted and "zelda" not in trace.messages[0].content
    assert trace.proofs == [{"choice_index": 0, "proof": PROOF_REDACTED}]
    assert unverifiable_reason(trace).startswith("redacted")
    assert trace.signature and trace.signer == served["identity"]["node_id"]
