"""Which rows a node trains on: the round's instructions reach the dataset the recipe sees."""

from __future__ import annotations

from federation import protocol
from federation.config import FederationConfig
from federation.dataset import node_dataset
from tests.federation.fed_helpers import base_config, fill_store


def test_sft_approved_only_trains_on_approved_replies_only(tmp_path):
    from traces.schemas import Feedback
    from traces.store import TraceStore

    store = fill_store(tmp_path / "node.db", "node-a", 8, pairs=True)     # 8 traces, each choice 0 chosen
    unrated = fill_store(tmp_path / "node.db", "node-b", 5)              # 5 more with no feedback at all
    with TraceStore(store) as opened:
        down = [t for t in opened.iter_traces() if t.id.startswith("chatcmpl-node-b")][0]
        opened.record_feedback(Feedback(id="fb-down", trace_id=down.id, thumbs=-1))
    assert unrated == store

    everything = node_dataset(store, "sft", min_examples=1, max_examples=None, seed=0)
    approved = node_dataset(store, "sft", min_examples=1, max_examples=None, seed=0, approved_only=True)
    assert len(everything) == 8 + 4                                      # the voted-down reply is left out
    assert len(approved) == 8
    assert all("How much is" in row["messages"][-2]["content"] and "node-a" in row["messages"][-2]["content"]
               for row in approved)

    # the knob travels from the config through the round's instructions
    config = FederationConfig.model_validate(base_config(tmp_path, [("node-a", store)],
                                                         client={"sft_approved_only": True}))
    record = protocol.round_config(config, training_settings_json="{}", base_ref="tiny-random", base_sha256="x",
                                   base_version="", lora_a_digest="d", seed=1)
    assert protocol.RoundInstructions.from_record(record).sft_approved_only is True
