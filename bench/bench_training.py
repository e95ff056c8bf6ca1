"""Training benchmark on the embedded model, in one process.

    .venv/bin/python bench/bench_training.py [--model REF] [--sft-steps 12] [--dpo-steps 8] [--repeats 2]
                                             [--heldout-steps 50] [--threads 0]

(a) seconds per step of our SFT and DPO recipes (training/sft.py, training/dpo.py) against a minimal
    plain-TRL script with the same settings (SFTTrainer/DPOTrainer + peft_config), same data, same
    process; runs alternate ours/plain `--repeats` times, the first two steps of each run are
    warm-up and not counted; each ratio ours/plain is printed against the target (<= 1.05, "met" or
    "NOT met"). Setup time (LoRA wrapping, tokenization, DPO's reference copy or precomputed
    reference log-probs) is everything a run spends outside its steps, reported apart for SFT and DPO.
(b) time to merge the LoRA adapter, build the checkpoint folder (safetensors, tokenizer, manifest,
    card) and verify it, in float32 and bfloat16.
(c) held-out loss (assistant tokens only) before and after `--heldout-steps` SFT steps on real
    chitchat conversations (chitchat-dataset, speakers alternating user/assistant).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP_STEPS = 2
TARGET_RATIO = 1.05   # issue 4: our recipes' s/step may cost at most 5 % more than plain TRL's
SETUP_PARTS = {"sft": "LoRA wrap, tokenization", "dpo": "LoRA wrap, tokenization, reference model"}


def chitchat_sft_rows(n: int, *, offset: int, max_turns: int = 4, max_chars: int = 300) -> list[dict]:
    """Real conversations as SFT rows: speakers alternate user/assistant, ending on an assistant turn.
    Turns are cut to `max_chars` so a row is about 100-300 tokens (CPU step time grows with length)."""
    from traces.samples import chitchat_conversations

    conversations = list(chitchat_conversations())
    random.Random(0).shuffle(conversations)
    rows = []
    for turns in conversations[offset:]:
        turns = list(turns[:max_turns])
        if len(turns) % 2:
            turns = turns[:-1]
        if len(turns) < 2:
            continue
        rows.append({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t[:max_chars]}
                                  for i, t in enumerate(turns)]})
        if len(rows) == n:
            break
    return rows


def chitchat_dpo_rows(n: int) -> list[dict]:
    """The real reply is chosen; the reply of another conversation is rejected."""
    rows = chitchat_sft_rows(n + 1, offset=3000, max_turns=2)
    return [{"prompt": rows[i]["messages"][:1], "chosen": rows[i]["messages"][1:],
             "rejected": rows[i + 1]["messages"][1:]} for i in range(n)]


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.started)

    return StepTimer()


def plain_trl(method: str, model, tokenizer, dataset, settings, steps: int, callbacks) -> None:
    """What one would write with TRL alone: the same hyperparameters, TRL wraps LoRA itself."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    hp, lora = settings.recipe(method), settings.lora
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="plain-trl-"), use_cpu=True, bf16=False, activation_checkpointing=False,
        report_to="none", save_strategy="no", disable_tqdm=True, max_steps=steps, learning_rate=hp.learning_rate,
        seed=hp.seed, data_seed=hp.seed, per_device_train_batch_size=hp.per_device_train_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_steps, weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, optim=hp.optim,
        adam_beta1=hp.adam_beta1, adam_beta2=hp.adam_beta2, adam_epsilon=hp.adam_epsilon,
        logging_steps=hp.logging_steps, max_length=hp.max_length,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM")
    if method == "sft":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, assistant_only_loss=True), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    else:
        args = DPOConfig(**common, beta=hp.beta, loss_type=[hp.loss_type],
                         precompute_ref_log_probs=hp.precompute_ref_log_probs)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=callbacks)
    trainer.train()


def verdict(ratio: float) -> str:
    return "met" if ratio <= TARGET_RATIO else "NOT met"


def steady(durations: list[float]) -> list[float]:
    return durations[WARMUP_STEPS:] if len(durations) > WARMUP_STEPS else durations


def bench_steps(method: str, model_ref: str, dataset, settings, steps: int, repeats: int) -> dict:
    from inference.loading import load_model
    from training.dpo import train_dpo
    from training.sft import train_sft

    recipe = {"sft": train_sft, "dpo": train_dpo}[method]
    timings: dict[str, list[float]] = {"ours": [], "plain": []}
    setup: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(repeats):
        for who in ("ours", "plain"):
            loaded = load_model(model_ref)
            timer = step_timer()
            started = time.perf_counter()
            if who == "ours":
                recipe(loaded.model, loaded.tokenizer, dataset, settings, max_steps=steps, callbacks=[timer])
            else:
                plain_trl(method, loaded.model, loaded.tokenizer, dataset, settings, steps, [timer])
            total = time.perf_counter() - started
            timings[who] += steady(timer.durations)
            setup[who].append(total - sum(timer.durations))
    ours, plain = statistics.mean(timings["ours"]), statistics.mean(timings["plain"])
    return {"ours_s_per_step": ours, "plain_s_per_step": plain, "ratio": ours / plain,
            "ours_setup_s": statistics.mean(setup["ours"]), "plain_setup_s": statistics.mean(setup["plain"]),
            "steps_counted": len(timings["ours"])}


def bench_checkpoint(model_ref: str, dataset, settings) -> dict:
    from inference.loading import load_model
    from training.checkpoint import build_checkpoint, lineage_base, next_version
    from training.manifest import verify_folder
    from training.sft import train_sft

    loaded = load_model(model_ref)
    result = train_sft(loaded.model, loaded.tokenizer, dataset, settings, max_steps=2)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            started = time.perf_counter()
            path = build_checkpoint(result.model, loaded.tokenizer, Path(tmp) / dtype,
                                    version=next_version(loaded.resolved), base_model=lineage_base(loaded.resolved),
                                    parent=loaded.resolved, training=result.training_summary(), dtype=dtype)
            built = time.perf_counter()
            verify_folder(path)
            done = time.perf_counter()
            size = sum(p.stat().st_size for p in path.iterdir()) / 1e6
            out[f"{dtype}_build_s"] = built - started
            out[f"{dtype}_verify_s"] = done - built
            out[f"{dtype}_total_s"] = done - started
            out[f"{dtype}_MB"] = size
    return out


def bench_heldout(model_ref: str, settings, steps: int) -> dict:
    from datasets import Dataset

    from inference.loading import load_model
    from training.eval import heldout_loss
    from training.sft import train_sft

    train_rows = chitchat_sft_rows(steps * settings.sft.per_device_train_batch_size, offset=0)
    heldout_rows = chitchat_sft_rows(100, offset=4500)
    loaded = load_model(model_ref)
    before = heldout_loss(loaded.model, loaded.tokenizer, heldout_rows, settings.eval)
    result = train_sft(loaded.model, loaded.tokenizer, Dataset.from_list(train_rows), settings, max_steps=steps)
    after = heldout_loss(result.model, loaded.tokenizer, heldout_rows, settings.eval)
    return {"before": before.metrics["loss"], "after": after.metrics["loss"], "tokens": before.metrics["tokens"],
            "train_first_loss": result.metrics["first_loss"], "train_last_loss": result.metrics["last_loss"],
            "train_seconds": result.metrics["seconds"], "heldout_conversations": len(heldout_rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model reference to benchmark")
    parser.add_argument("--sft-steps", type=int, default=12, help="steps per SFT timing run (2 are warm-up)")
    parser.add_argument("--dpo-steps", type=int, default=8, help="steps per DPO timing run (2 are warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating ours/plain runs per recipe")
    parser.add_argument("--heldout-steps", type=int, default=50, help="SFT steps for the held-out loss figure")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers
    from datasets import Dataset

    from training.config import TrainingSettings

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainingSettings()  # the shipped configs/training.toml
    print(f"model {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"batch {settings.sft.per_device_train_batch_size}, LoRA r={settings.lora.r} {settings.lora.target_modules}")

    sft_data = Dataset.from_list(chitchat_sft_rows(200, offset=0))
    dpo_data = Dataset.from_list(chitchat_dpo_rows(100))
    steps = {}
    for method, data, n in (("sft", sft_data, args.sft_steps), ("dpo", dpo_data, args.dpo_steps)):
        r = steps[method] = bench_steps(method, args.model, data, settings, n, args.repeats)
        print(f"(a) {method.upper()} s/step: ours {r['ours_s_per_step']:.3f}, plain TRL {r['plain_s_per_step']:.3f}, "
              f"ratio {r['ratio']:.3f} (target <= {TARGET_RATIO}: {verdict(r['ratio'])}; {r['steps_counted']} steps "
              f"each); {method.upper()} setup ({SETUP_PARTS[method]}) ours {r['ours_setup_s']:.1f} s, "
              f"plain {r['plain_setup_s']:.1f} s, ratio {r['ours_setup_s'] / max(r['plain_setup_s'], 1e-9):.2f}")
    ckpt = bench_checkpoint(args.model, sft_data, settings)
    for dtype in ("float32", "bfloat16"):
        print(f"(b) checkpoint {dtype}: merge+build {ckpt[dtype + '_build_s']:.2f} s, verify {ckpt[dtype + '_verify_s']:.2f} s, "
              f"total {ckpt[dtype + '_total_s']:.2f} s, {ckpt[dtype + '_MB']:.0f} MB")
    held = bench_heldout(args.model, settings, args.heldout_steps)
    print(f"(c) held-out loss on {held['heldout_conversations']} chitchat conversations ({held['tokens']:.0f} assistant "
          f"tokens): {held['before']:.4f} before, {held['after']:.4f} after {args.heldout_steps} SFT steps "
          f"(train loss {held['train_first_loss']:.3f} -> {held['train_last_loss']:.3f}, {held['train_seconds']:.0f} s)")
    print(f"summary: s/step ratio ours/plain TRL, target <= {TARGET_RATIO}: "
          + ", ".join(f"{m.upper()} {r['ratio']:.3f} ({verdict(r['ratio'])})" for m, r in steps.items())
          + "; setup ours/plain: "
          + ", ".join(f"{m.upper()} {r['ours_setup_s']:.1f} s / {r['plain_setup_s']:.1f} s" for m, r in steps.items()))


if __name__ == "__main__":
    main()
