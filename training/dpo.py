"""Direct Preference Optimization with TRL's DPOTrainer and a LoRA adapter.

Data: {"prompt": [msgs], "chosen": [assistant msg], "rejected": [assistant msg]}. TRL renders the
prompt with the generation prompt and scores only the tokens after it (the reply plus `<|im_end|>`),
so the loss is on assistant tokens without needing the template's generation markers.

The reference policy is the model with its adapter disabled: the checkpoint that served the traces
the pairs came from. That holds for a PeftModel passed in, too (a federated round's model with the
global adapter loaded): TRL would otherwise copy the current adapter into a "ref" adapter.
The reference is passed to TRL as an explicit adapter-disabled copy (training/lora.py says why);
with `precompute_ref_log_probs` it is scored once over the dataset before training and freed.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from training.config import TrainingSettings
from training.data import check_dataset
from training.lora import (
    adapter_disabled_copy,
    describe_adapter,
    ensure_lora,
    keep_adapter_state,
    remove_trl_patches,
)
from training.results import TrainResult, collect_result
from training.runtime import apply_runtime


def train_dpo(
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
    on preference pairs; `max_steps`, `learning_rate` and `seed` override settings.dpo."""
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    hp = settings.dpo
    seed = hp.seed if seed is None else seed
    check_dataset(dataset, "dpo")
    apply_runtime(settings.runtime)
    peft_model = ensure_lora(model, settings.lora, seed=seed)

    hyperparameters = {
        **hp.model_dump(),
        "max_steps": hp.max_steps if max_steps is None else max_steps,
        "learning_rate": hp.learning_rate if learning_rate is None else learning_rate,
        "seed": seed,
        "lora": describe_adapter(peft_model),
        "reference": "adapter-disabled",
    }
    with tempfile.TemporaryDirectory(prefix="swarmloop-dpo-") as scratch:
        args = DPOConfig(
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
            # hyperparameters ([dpo])
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
            beta=hp.beta,
            loss_type=[hp.loss_type],
            label_smoothing=hp.label_smoothing,
            precompute_ref_log_probs=hp.precompute_ref_log_probs,
            eval_strategy="no",
        )
        # The reference is an explicit adapter-disabled copy, never TRL's PEFT path (see training/lora.py).
        reference = adapter_disabled_copy(peft_model)
        with keep_adapter_state(peft_model):
            trainer = DPOTrainer(
                model=peft_model,
                ref_model=reference,
                args=args,
                train_dataset=dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        if hp.precompute_ref_log_probs:
            trainer.ref_model = None  # its log-probs are columns of the datasets now: free the copy
        del reference
        trainer.remove_callback(PrinterCallback)  # metrics come back in TrainResult; callers show progress
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        eval_metrics = trainer.evaluate() if eval_dataset is not None else {}
    remove_trl_patches(peft_model)
    return collect_result(
        trainer, peft_model, method="dpo", seconds=seconds, hyperparameters=hyperparameters, eval_metrics=eval_metrics
    )
