"""The TRL recipes on tiny-random: losses go down, a PeftModel passed in is trained as it is (frozen
LoRA A stays frozen and unchanged, no extra adapter survives), and DPO/KTO use the adapter-disabled
model as their reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset
from training_rows import dpo_rows, kto_rows, sft_rows

from training.data import DatasetFormatError
from training.dpo import train_dpo
from training.eval import heldout_loss, preference_accuracy
from training.kto import train_kto
from training.sft import train_sft


def test_sft_loss_goes_down_and_reports_metrics(sft_trained):
    loaded, result, before = sft_trained
    metrics = result.metrics
    assert metrics["steps"] == 8 and metrics["examples"] == 8
    assert metrics["last_loss"] < metrics["first_loss"]
    after = heldout_loss(result.model, loaded.tokenizer, sft_rows(4))
    assert after.metrics["loss"] < before.metrics["loss"]
    # only the assistant replies are labelled: "Hello there, friend!<|im_end|>" is a handful of tokens
    assert 0 < after.metrics["tokens"] / 4 < 12
    assert [entry["loss"] for entry in result.log_history if "loss" in entry][0] == metrics["first_loss"]
    assert list(result.model.peft_config) == ["default"]
    assert "forward" not in result.model.get_base_model().__dict__  # TRL's fused-LM-head patch is gone
    summary = result.training_summary(examples_by_node={"node-0": 4, "node-1": 4})
    assert summary.method == "sft" and summary.steps == 8
    assert summary.hyperparameters["learning_rate"] == 1e-2 and summary.hyperparameters["lora"]["r"] == 8


def test_sft_eval_dataset_loss_matches_our_heldout_loss(sft_model_copy, settings):
    model, tokenizer = sft_model_copy
    settings.sft.per_device_eval_batch_size = 4  # one eval batch: TRL's mean is the token mean
    held_out = Dataset.from_list(sft_rows(4))
    result = train_sft(model, tokenizer, Dataset.from_list(sft_rows()), settings, max_steps=1, eval_dataset=held_out)
    ours = heldout_loss(result.model, tokenizer, held_out, settings.eval)
    assert result.metrics["eval_loss"] == pytest.approx(ours.metrics["loss"], abs=1e-4)


def _ffa_lora_model(tiny_model_path):
    """What the federation engineer passes: LoRA with A drawn from a shared seed and frozen."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from training.config import LoraSettings
    from training.lora import lora_config

    set_seed(1234)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), lora_config(LoraSettings(dropout=0.0)))
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
    return model


def _lora_tensors(model, kind):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"lora_{kind}" in n}


@pytest.mark.parametrize("recipe", ["sft", "dpo"])
def test_frozen_lora_a_stays_frozen_and_unchanged(tiny_model_path, settings, recipe):
    from inference.loading import load_tokenizer

    tokenizer = load_tokenizer("tiny-random")
    model = _ffa_lora_model(tiny_model_path)
    a_before, b_before = _lora_tensors(model, "A"), _lora_tensors(model, "B")
    if recipe == "sft":
        result = train_sft(model, tokenizer, Dataset.from_list(sft_rows()), settings, max_steps=3)
    else:
        result = train_dpo(model, tokenizer, Dataset.from_list(dpo_rows()), settings, max_steps=3)
    assert result.model is model  # trained as it is, not wrapped again
    assert list(model.peft_config) == ["default"]
    for name, param in model.named_parameters():
        if "lora_A" in name:
            assert not param.requires_grad, name
            assert torch.equal(param.detach(), a_before[name]), f"{name} changed"
    b_after = _lora_tensors(model, "B")
    assert any(not torch.equal(b_after[n], b_before[n]) for n in b_before), "no LoRA B moved"


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_reference_is_the_adapter_disabled_model(sft_model_copy, settings, precompute):
    """A PeftModel with a trained adapter: TRL's step-1 rewards (before any DPO update) must equal
    beta * (policy - adapter-disabled) log-prob ratios. TRL's own default would give exactly 0."""
    model, tokenizer = sft_model_copy
    settings.dpo.precompute_ref_log_probs = precompute
    pairs = dpo_rows(4)
    expected = preference_accuracy(model, tokenizer, pairs, beta=settings.dpo.beta, settings=settings.eval)
    assert abs(expected.metrics["reward_chosen"]) > 1e-4  # the SFT adapter moved the policy off the base
    settings.dpo.per_device_train_batch_size = 4          # step 1 sees exactly these 4 pairs
    result = train_dpo(model, tokenizer, Dataset.from_list(pairs), settings, max_steps=1, learning_rate=1e-4)
    first = result.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(expected.metrics["reward_chosen"], abs=1e-4)
    assert first["rewards/rejected"] == pytest.approx(expected.metrics["reward_rejected"], abs=1e-4)
    assert result.hyperparameters["reference"] == "adapter-disabled"


def test_dpo_then_kto_on_a_fresh_model_learn_the_preference(dpo_trained, settings):
    loaded, result = dpo_trained
    m = result.metrics
    assert m["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # fresh adapter: policy == reference
    assert m["last_loss"] < m["first_loss"]
    assert m["rewards/accuracies"] > 0.5 and m["rewards/margins"] > 0
    after = preference_accuracy(result.model, loaded.tokenizer, dpo_rows(), beta=settings.dpo.beta)
    assert after.metrics["preference_accuracy"] > 0.5 and after.metrics["reward_margin"] > 0
    assert len(after.correct) == 8

    model = copy.deepcopy(result.model)  # the fixture's DPO model stays as it was for other tests
    kto = train_kto(model, loaded.tokenizer, Dataset.from_list(kto_rows()), settings, max_steps=4)
    assert kto.model is model and list(kto.model.peft_config) == ["default"]
    assert kto.metrics["steps"] == 4 and math.isfinite(kto.metrics["last_loss"])
    assert kto.metrics["rewards/margins"] > 0  # desirable replies gain on undesirable ones
    assert kto.hyperparameters["loss_type"] == "kto" and kto.hyperparameters["adam_beta2"] == 0.999


def test_recipes_reject_data_in_the_wrong_format(tiny_model_path, settings):
    from inference.loading import load_model

    loaded = load_model("tiny-random")
    with pytest.raises(DatasetFormatError, match="missing chosen, rejected"):
        train_dpo(loaded.model, loaded.tokenizer, Dataset.from_list(kto_rows()), settings, max_steps=1)
    bad = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DatasetFormatError, match="row 0: messages has no assistant turn"):
        train_sft(loaded.model, loaded.tokenizer, Dataset.from_list(bad), settings, max_steps=1)
    loaded.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="generation"):
        train_sft(loaded.model, loaded.tokenizer, Dataset.from_list(sft_rows()), settings, max_steps=1)


def _optimizer_probe():
    """A TrainerCallback that records the optimizer's Adam settings as the trainer built them."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        seen: dict = {}

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            group = optimizer.param_groups[0]
            self.seen = {"betas": tuple(group["betas"]), "eps": group["eps"]}

    return Probe()


def test_adam_settings_and_kto_loss_type_come_from_the_config(sft_model_copy, dpo_trained, settings):
    model, tokenizer = sft_model_copy
    settings.sft.adam_beta1, settings.sft.adam_beta2, settings.sft.adam_epsilon = 0.8, 0.95, 1e-6
    probe = _optimizer_probe()
    train_sft(model, tokenizer, Dataset.from_list(sft_rows()), settings, max_steps=1, callbacks=[probe])
    assert probe.seen == {"betas": (0.8, 0.95), "eps": 1e-6}

    # apo_zero_unpaired has no KL term, so a batch of one example is allowed (the config check knows it)
    from training.config import KTOSettings

    with pytest.raises(ValueError, match="at least 2"):
        KTOSettings(per_device_train_batch_size=1)
    settings.kto = KTOSettings(loss_type="apo_zero_unpaired", per_device_train_batch_size=1, learning_rate=1e-2)
    loaded, dpo = dpo_trained
    kto = train_kto(copy.deepcopy(dpo.model), loaded.tokenizer, Dataset.from_list(kto_rows(2)), settings, max_steps=2)
    assert kto.hyperparameters["loss_type"] == "apo_zero_unpaired" and kto.metrics["steps"] == 2
    assert math.isfinite(kto.metrics["last_loss"])
