"""Supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter.

Data: {"messages": [...]} conversations. The loss covers the assistant replies only: the chat
template marks them with {% generation %} (inference/chat_template.py) and `assistant_only_loss`
masks everything else, so the default system prompt and the users' words are never learned.
Federated clients call this same function for their local steps.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from training.config import SFTSettings, TrainingSettings
from training.data import check_dataset
from training.lora import describe_adapter, ensure_lora, keep_adapter_state, remove_trl_patches
from training.results import TrainResult, collect_result
from training.runtime import apply_runtime

GENERATION_MARKER = "{% generation %}"


def check_chat_template(tokenizer: Any, hp: SFTSettings) -> None:
    """ValueError (one line) when the tokenizer cannot train with these settings: no chat template,
    or no {% generation %} markers while assistant_only_loss is on. Callers may check before any work."""
    template = tokenizer.chat_template or ""
    if not template:
        raise ValueError("the tokenizer has no chat template; SFT on conversations needs one")
    if hp.assistant_only_loss and GENERATION_MARKER not in template:
        raise ValueError(
            "assistant_only_loss needs a chat template with {% generation %} markers around the assistant "
            "replies (see inference/chat_template.py); this tokenizer's template has none"
        )


def train_sft(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    settings: TrainingSettings,
    *,
    eval_dataset: Any = None,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    seed: int | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train `model` (a transformers model, wrapped with LoRA here, or a PeftModel trained as it is)
    on `dataset`; `max_steps`, `learning_rate` and `seed` override settings.sft."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    hp = settings.sft
    seed = hp.seed if seed is None else seed
    check_dataset(dataset, "sft")
    check_chat_template(tokenizer, hp)
    apply_runtime(settings.runtime)
    peft_model = ensure_lora(model, settings.lora, seed=seed)

    hyperparameters = {
        **hp.model_dump(),
        "max_steps": hp.max_steps if max_steps is None else max_steps,
        "learning_rate": hp.learning_rate if learning_rate is None else learning_rate,
        "seed": seed,
        "lora": describe_adapter(peft_model),
    }
    with tempfile.TemporaryDirectory(prefix="swarmloop-sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            # what this machine needs (configs/training.toml [runtime])
            use_cpu=settings.runtime.use_cpu,
            bf16=settings.runtime.bf16,
            activation_checkpointing=settings.runtime.activation_checkpointing,
            dataloader_num_workers=settings.runtime.dataloader_num_workers,
            dataset_num_proc=settings.runtime.dataset_num_proc,
            # we build our own checkpoints (training/checkpoint.py) and report nowhere
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            # hyperparameters ([sft])
            max_steps=hyperparameters["max_steps"],
            learning_rate=hyperparameters["learning_rate"],
            seed=seed,
            data_seed=seed,
            num_train_epochs=hp.num_train_epochs,
            per_device_train_batch_size=hp.per_device_train_batch_size,
            per_device_eval_batch_size=hp.per_device_eval_batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            lr_scheduler_type=hp.lr_scheduler_type,
            warmup_steps=hp.warmup_steps,
            weight_decay=hp.weight_decay,
            max_grad_norm=hp.max_grad_norm,
            optim=hp.optim,
            adam_beta1=hp.adam_beta1,
            adam_beta2=hp.adam_beta2,
            adam_epsilon=hp.adam_epsilon,
            logging_steps=hp.logging_steps,
            max_length=hp.max_length,
            assistant_only_loss=hp.assistant_only_loss,
            packing=hp.packing,
            eval_strategy="no",
        )
        with keep_adapter_state(peft_model):
            trainer = SFTTrainer(
                model=peft_model,
                args=args,
                train_dataset=dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        trainer.remove_callback(PrinterCallback)  # metrics come back in TrainResult; callers show progress
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        eval_metrics = trainer.evaluate() if eval_dataset is not None else {}
    remove_trl_patches(peft_model)
    return collect_result(
        trainer, peft_model, method="sft", seconds=seconds, hyperparameters=hyperparameters, eval_metrics=eval_metrics
    )
