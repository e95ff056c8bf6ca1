"""Verified ingest on a node: before a round trains on a node's data, check where it came from.

    signatures   every record the round's rows are made of (traces, feedback, and the sources of
                 derived pairs) against the allow-list of node keys: traces/verify.py
    proofs       a random sample of the traces used (proof_sample_rate, at least one when the rate
                 is above zero): their activation proofs re-run on the claimed model by one
                 prefill (inference/proofs.py). A trace without a proof, with redacted text, or
                 served by weights this node does not hold (or in a dtype it cannot run) is
                 counted "unverifiable", never failed.

A node is excluded for the round when any signature fails (altered, unknown key, derived row not
matching its sources), when an unsigned record is found and signatures are required, or when any
sampled proof fails. It then replies with a skip, the reason and this report, which the server
records per round (metrics.json) and sums into the checkpoint manifest's `integrity` field and card.

The server sends the settings with every round (`IngestSettings`, in the round's ConfigRecord),
including the allow-list itself and a fresh sampling seed, drawn after the data is in the store.

Trust model: the checks run in the node's own ClientApp. They catch records altered or forged in
a store (by an operator, a compromised disk, another process) and replies the claimed model did
not produce, on any node that runs this code. A node that runs modified code can skip them; a
verifier outside the node (a separate role in a deployment) can run `check_node_data` itself on
the store it is given. Signatures are torch-free (traces/verify.py); proofs need the model.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from federation.logs import get_logger

log = get_logger()

INGEST_KEY = "integrity"             # the reply's ConfigRecord holding the IngestReport
MAX_REASONS = 3


class IngestSettings(BaseModel):
    """What the server tells each node about the round's ingest checks."""

    trusted_keys_toml: str = ""          # the allow-list file's text ("" = no allow-list: signatures unchecked)
    require_signatures: bool = False
    proof_sample_rate: float = 0.0
    proof_model: str = ""                # a model ref to verify proofs on ("" = the round's base)
    seed: int = 0                        # drawn by the server each round

    @property
    def active(self) -> bool:
        return bool(self.trusted_keys_toml) or self.proof_sample_rate > 0

    def trusted_keys(self) -> Any:
        if not self.trusted_keys_toml:
            return None
        import tomllib

        from traces.signing import TrustedKeys, TrustedKeysFile

        return TrustedKeys(TrustedKeysFile.model_validate(tomllib.loads(self.trusted_keys_toml)).keys)


class IngestReport(BaseModel):
    """One node's ingest result for one round (flat: it travels as a Flower ConfigRecord)."""

    signatures_checked: bool = False
    records_checked: int = 0
    traces: int = 0
    feedback: int = 0
    derived: int = 0
    verified: int = 0
    unsigned: int = 0
    unknown_key: int = 0
    bad_signatures: int = 0
    mismatched: int = 0
    signers: str = ""                    # "name:count,name:count"
    proofs_sampled: int = 0
    proofs_checked: int = 0              # sampled traces whose proofs were re-run
    proofs_passed: int = 0
    proofs_failed: int = 0
    proofs_unverifiable: int = 0
    unverifiable_reasons: str = ""       # "reason:count; reason:count"
    excluded: bool = False
    reason: str = ""
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_record(cls, record: Any) -> "IngestReport":
        return cls.model_validate({k: v for k, v in dict(record).items() if k in cls.model_fields})


# ----------------------------------------------------------------------------------- proofs


@dataclass
class ProofOutcome:
    trace_id: str
    status: str                          # passed | failed | unverifiable
    reason: str = ""


@dataclass
class ProofCounts:
    sampled: int = 0
    passed: int = 0
    failed: int = 0
    unverifiable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)     # unverifiable reasons
    failures: list[str] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return self.passed + self.failed

    def add(self, outcome: ProofOutcome) -> None:
        self.sampled += 1
        if outcome.status == "passed":
            self.passed += 1
        elif outcome.status == "failed":
            self.failed += 1
            if len(self.failures) < MAX_REASONS:
                self.failures.append(f"trace {outcome.trace_id}: {outcome.reason}")
        else:
            self.unverifiable += 1
            self.reasons[outcome.reason] = self.reasons.get(outcome.reason, 0) + 1


class VerifierModels:
    """The models proofs can be re-run on, by (weights sha256, dtype): the round's base (its
    adapter disabled while verifying) and, loaded on first use, other dtypes of it or the
    configured proof model. Anything else is unverifiable here."""

    def __init__(self, *, base_model: Any = None, tokenizer: Any = None, base_ref: str = "",
                 base_sha256: str = "", extra_ref: str = "", loader: Callable[[str, str], Any] | None = None):
        self._refs: dict[str, str] = {}
        self._models: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._loader = loader
        if base_sha256:
            self._refs[base_sha256] = base_ref
            if base_model is not None:
                self._models[(base_sha256, "float32")] = (base_model, tokenizer)
        if extra_ref:
            from inference.model_refs import resolve_model_ref

            resolved = resolve_model_ref(extra_ref)
            self._refs.setdefault(resolved.weights_sha256, extra_ref)

    def knows(self, weights_sha256: str) -> bool:
        return weights_sha256 in self._refs

    def get(self, weights_sha256: str, dtype: str) -> tuple[Any, Any] | None:
        key = (weights_sha256, dtype)
        if key not in self._models:
            ref = self._refs.get(weights_sha256)
            if ref is None or self._loader is None:
                return None
            self._models[key] = self._loader(ref, dtype)
        return self._models[key]


def load_plain_model(ref: str, dtype: str) -> tuple[Any, Any]:
    from inference.loading import load_model

    loaded = load_model(ref, dtype=dtype)
    return loaded.model, loaded.tokenizer


def render_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids as the serving engine renders them (inference/engine.py: render_prompt)."""
    from inference.chat_template import TRAINING_CHAT_TEMPLATE

    template = None if getattr(tokenizer, "chat_template", None) else TRAINING_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=template)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _reply_ids(tokenizer: Any, text: str, finish_reason: str, prompt_len: int, positions: int) -> list[int]:
    """The reply's ids re-encoded from its text, end-of-sequence put back when the reply stopped on
    it: the node keeps `reply_ids` exactly when this rule would not give them back
    (inference/proofs_serving.py), so both sides share the one rule."""
    from inference.proofs_serving import reencoded_reply_ids

    return reencoded_reply_ids(lambda t: list(tokenizer(t, add_special_tokens=False)["input_ids"]),
                               tokenizer.eos_token_id, text, finish_reason, prompt_len, positions)


def _plain_model(model: Any) -> tuple[Any, Any]:
    """(the model to run, a context manager) — a PEFT model runs its base with the adapter off."""
    from contextlib import nullcontext

    if hasattr(model, "disable_adapter") and hasattr(model, "get_base_model"):
        return model.get_base_model(), model.disable_adapter()
    return model, nullcontext()


def verify_trace_proofs(trace: Any, models: VerifierModels) -> ProofOutcome:
    """Check every proof `trace` carries; passed only if all pass."""
    from inference.proofs import ActivationProof, ProofError, verify_proofs
    from traces.verify import proof_entries, unverifiable_reason

    why = unverifiable_reason(trace)
    if why is not None:
        return ProofOutcome(trace.id, "unverifiable", why)
    if not models.knows(trace.model.weights_sha256):
        return ProofOutcome(trace.id, "unverifiable", "served by weights this node cannot run")
    try:
        entries = proof_entries(trace)
    except ValueError as exc:
        return ProofOutcome(trace.id, "failed", str(exc))
    choices = {choice.index: choice for choice in trace.choices}
    for entry in entries:
        choice = choices.get(entry.choice_index)
        if choice is None:
            return ProofOutcome(trace.id, "failed", f"proof for choice {entry.choice_index}, which the trace does not have")
        try:
            proof = ActivationProof.from_dict(entry.proof)
        except ProofError as exc:
            return ProofOutcome(trace.id, "failed", str(exc))
        pair = models.get(trace.model.weights_sha256, proof.dtype)
        if pair is None:
            return ProofOutcome(trace.id, "unverifiable", f"no {proof.dtype} copy of the claimed model")
        model, tokenizer = pair
        prompt = entry.prompt_ids if entry.prompt_ids is not None else render_prompt_ids(tokenizer, trace.prompt)
        reply = entry.reply_ids if entry.reply_ids is not None else _reply_ids(
            tokenizer, choice.text, choice.finish_reason, len(prompt), proof.positions)
        runnable, context = _plain_model(model)
        was_training = runnable.training
        runnable.eval()
        try:
            with context:
                result = verify_proofs(runnable, prompt, reply, proof)
        except (ProofError, ValueError, IndexError) as exc:
            return ProofOutcome(trace.id, "failed", f"choice {entry.choice_index}: {exc}")
        finally:
            runnable.train(was_training)
        if not result.accepted:
            return ProofOutcome(trace.id, "failed", f"choice {entry.choice_index}: {result.reason}")
    return ProofOutcome(trace.id, "passed")


def sample_size(population: int, rate: float) -> int:
    if population == 0 or rate <= 0:
        return 0
    return min(population, max(1, math.ceil(rate * population)))


# ----------------------------------------------------------------------------------- ingest


def check_node_data(path: Path | str, method: str, settings: IngestSettings, *, node_name: str,
                    model_version: str | None = None, models: VerifierModels | None = None,
                    models_factory: Callable[[], VerifierModels] | None = None) -> IngestReport:
    """Run the ingest checks on a node's store at `path` for `method`'s rows; never raises for
    bad data (that is what the report is for).

    `models` (or `models_factory`, called only when a sampled trace carries a proof to check)
    gives the verifier models."""
    from federation.dataset import NODE_CONSENT
    from traces.store import StoreError, TraceStore
    from traces.verify import unverifiable_reason, used_traces, verify_store

    started = time.perf_counter()
    report = IngestReport()
    path = Path(path)
    if path.is_dir():       # an exported dataset folder: rows without the records they came from
        if settings.require_signatures:
            report.excluded, report.reason = True, "an exported dataset folder carries no signatures (signatures are required)"
        report.seconds = round(time.perf_counter() - started, 3)
        return report
    trusted = settings.trusted_keys()
    expected = node_name if trusted is not None and node_name in set(trusted) else None
    try:
        with TraceStore(path, readonly=True) as store:
            # the records federation/dataset.py trains on: local + share
            signatures = verify_store(store, method, trusted, expected_signer=expected, model_version=model_version,
                                      consent=NODE_CONSENT)
            counts = ProofCounts()
            # a node already failing its signatures is excluded: no model needs loading for it
            if settings.proof_sample_rate > 0 and not signatures.failed(settings.require_signatures):
                ids = [t.id for t in used_traces(store, method, model_version=model_version, consent=NODE_CONSENT)]
                rng = random.Random(f"{settings.seed}:{node_name}")
                for trace_id in rng.sample(ids, sample_size(len(ids), settings.proof_sample_rate)):
                    trace = store.get_trace(trace_id)
                    why = unverifiable_reason(trace)
                    if why is None and models is None and models_factory is not None:
                        models = models_factory()       # loaded only once a proof is there to check
                    if why is None and models is None:
                        why = "no verifier model"
                    counts.add(ProofOutcome(trace_id, "unverifiable", why) if why is not None
                               else verify_trace_proofs(trace, models))
    except StoreError as exc:
        report.excluded, report.reason = True, f"store unreadable: {exc}"
        report.seconds = round(time.perf_counter() - started, 3)
        return report

    report.signatures_checked = signatures.enabled
    report.records_checked = signatures.checked
    for name in ("traces", "feedback", "derived", "verified", "unsigned", "unknown_key", "mismatched"):
        setattr(report, name, getattr(signatures, name))
    report.bad_signatures = signatures.bad_signature
    report.signers = ",".join(f"{k}:{v}" for k, v in sorted(signatures.signers.items()))
    report.proofs_sampled = counts.sampled
    report.proofs_checked = counts.checked
    report.proofs_passed = counts.passed
    report.proofs_failed = counts.failed
    report.proofs_unverifiable = counts.unverifiable
    report.unverifiable_reasons = "; ".join(f"{k}:{v}" for k, v in sorted(counts.reasons.items()))
    reasons = []
    if signatures.failed(settings.require_signatures):
        reasons.append("signatures: " + signatures.reason(settings.require_signatures))
    if counts.failed:
        reasons.append(f"proofs: {counts.failed} of {counts.checked} checked failed (first: {counts.failures[0]})")
    report.excluded = bool(reasons)
    report.reason = "; ".join(reasons)[:1000]
    report.seconds = round(time.perf_counter() - started, 3)
    return report


# ------------------------------------------------------------------------------- server side


_SUMMED = ("records_checked", "verified", "unsigned", "unknown_key", "bad_signatures", "mismatched",
           "proofs_sampled", "proofs_checked", "proofs_passed", "proofs_failed", "proofs_unverifiable")


def integrity_summary(history: list[dict[str, Any]], *, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `integrity` field from the per-round records of metrics.json: the ingest
    settings, per node the summed ingest counts and every exclusion, and every update the robust
    checks rejected."""
    nodes: dict[str, dict[str, Any]] = {}
    rejected: dict[str, list[str]] = {}
    for record in history:
        for name, info in record.get("nodes", {}).items():
            ingest = info.get("integrity")
            if ingest:
                entry = nodes.setdefault(name, {"rounds": 0, "rounds_excluded": 0, **{k: 0 for k in _SUMMED},
                                                "exclusions": []})
                entry["rounds"] += 1
                for key in _SUMMED:
                    entry[key] += int(ingest.get(key, 0))
                if ingest.get("excluded"):
                    entry["rounds_excluded"] += 1
                    entry["exclusions"].append(f"round {record['round']}: {ingest.get('reason', '')}")
            if info.get("status") == "rejected":
                rejected.setdefault(name, []).append(f"round {record['round']}: {info.get('reason', '')}")
    return {"ingest": {**settings, "nodes": nodes}, "rejected_updates": rejected}
