"""Settings for the training recipes, evaluation, checkpoints and the Hub publisher.

`configs/training.toml` is validated by TrainingSettings; every hyperparameter lives there, none in
code. The defaults below equal that file (a test checks it), so `TrainingSettings()` is the shipped
configuration. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "training.toml"

# A Hugging Face repo id, ORG/NAME (what `swarmloop traces push --repo-id` accepts).
HUB_REPO_ID = r"^[\w.-]+/[\w.-]+$"
HubRepoId = Annotated[str, StringConstraints(pattern=HUB_REPO_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeSettings(_Strict):
    """How the TRL trainers run on this kind of machine (facts.md: CPU, no GPU)."""

    use_cpu: bool = True
    bf16: bool = False                       # bf16 autocast warm-up made short CPU runs slower
    activation_checkpointing: bool = False   # about 27 % slower on CPU; memory is not the limit here
    torch_threads: int = Field(0, ge=0)      # 0 keeps torch's default; 1 when processes share few cores
    dataloader_num_workers: int = Field(0, ge=0)
    dataset_num_proc: int | None = None      # tokenization processes; None tokenizes in-process


class LoraSettings(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"


class RecipeSettings(_Strict):
    """Hyperparameters every recipe shares; `max_steps = -1` runs `num_train_epochs` instead."""

    learning_rate: float = Field(2e-4, gt=0)
    max_steps: int = -1
    num_train_epochs: float = Field(1.0, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    lr_scheduler_type: str = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "adamw_torch"
    adam_beta1: float = Field(0.9, ge=0, lt=1)        # TRL / transformers defaults
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    logging_steps: int = Field(1, ge=1)
    seed: int = 42


class SFTSettings(RecipeSettings):
    assistant_only_loss: bool = True    # loss on the generation-marked assistant spans only
    packing: bool = False


class DPOSettings(RecipeSettings):
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: str = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # true: score the (fixed) reference once over the whole dataset before training, then free it.
    # Pays off only when a run sees most rows more than once; a federated round of a few steps over
    # a large local dataset would pay a forward pass over every row, so the reference runs per step.
    precompute_ref_log_probs: bool = False


class KTOSettings(RecipeSettings):
    learning_rate: float = Field(5e-5, gt=0)
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    precompute_ref_log_probs: bool = False  # as in [dpo]

    @model_validator(mode="after")
    def _kl_needs_a_batch(self) -> "KTOSettings":
        # KTO estimates its KL term from mismatched pairs inside a batch: one example is no batch.
        # (apo_zero_unpaired has no KL term.)
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError("kto.per_device_train_batch_size must be at least 2 (the KL estimate pairs examples in a batch)")
        return self


class EvalSettings(_Strict):
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)
    max_new_tokens: int = Field(64, ge=1)
    pass_threshold: float = Field(0.5, ge=0, le=1)   # a judge score at or above this counts as correct


class CheckpointSettings(_Strict):
    dtype: Literal["float32", "bfloat16"] = "float32"
    license: str = "apache-2.0"
    tags: list[str] = Field(default_factory=lambda: ["swarmloop", "federated-learning", "trl", "lora", "text-generation"])
    language: list[str] = Field(default_factory=lambda: ["en"])
    name: str = "swarmloop"             # the card's title prefix: "<name> <version>"
    # Public Hub datasets (ORG/NAME) the training data was pushed to (`swarmloop traces push`);
    # every checkpoint built with these settings lists them in its card's `datasets` metadata.
    datasets: list[HubRepoId] = Field(default_factory=list)


class HubSettings(_Strict):
    private: bool = True
    token_env: str = "HF_TOKEN"         # the environment variable that holds a write token


class TrainingSettings(_Strict):
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SFTSettings = Field(default_factory=SFTSettings)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    kto: KTOSettings = Field(default_factory=KTOSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    hub: HubSettings = Field(default_factory=HubSettings)

    def recipe(self, method: str) -> RecipeSettings:
        return {"sft": self.sft, "dpo": self.dpo, "kto": self.kto}[method]


def load_training_settings(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> TrainingSettings:
    """configs/training.toml (or `path`) validated, with dotted `overrides` ("sft.max_steps") on top.

    Raises swarmloop.errors.UserError with one line naming the file and the key."""
    from swarmloop.configfile import load_config

    return load_config(path if path is not None else DEFAULT_CONFIG_PATH, TrainingSettings, overrides)
