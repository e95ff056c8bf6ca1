"""Activation proofs on the embedded model: false rejections, false acceptances, size, overhead, speed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_integrity.py              # 200 traces of each kind
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_integrity.py --n 10       # a quick check

Prompts: real conversations (chitchat-dataset, MIT): the first 1, 3 or 5 turns, ending on the user.
Honest traces: SmolLM2-135M fp32 replies sampled (temperature 1.0, seeded) with a KV-cache decode
loop whose final-norm hook feeds a ProofBuilder (inference/proofs_decode.py), then verified by
one prefill on the same model with the default thresholds (FP32_THRESHOLDS).
Tampered traces, each verified against the claimed model (the embedded one, fp32):
  one-token    an honest trace with one reply token replaced by a random one (any text position;
               a final <|im_end|> is not text and stays)
  prompt       an honest reply and proof presented with one prompt token replaced (same length)
  tiny-random  reply and proof produced by the tiny-random model
  v1           reply and proof produced by a LoRA-tuned copy (3 real SFT steps, merged)
  bf16         reply and proof produced by a bf16 copy, the proof relabelled float32 (the honest
               label is refused outright)
Coverage: by default the last sampled token is fed once more (as inference/engine.py does), so the
proof covers every reply token; --no-cover-last gives plain TOPLOC coverage (the last token then
only passes a plausibility check).
Overhead: the same decode loop without proofs, with the hook + ProofBuilder, and with them plus the
extra last step, on the first --overhead-n prompts, rotating which runs first, same seeds
(identical replies); also the time measured inside the hook and builder over all honest runs.
Verification time vs generation time: per honest trace, decode wall time (with proofs) over
verification wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integrity"))      # integrity_helpers: prompts, v1, tamperings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="honest traces, and tampered traces of each kind")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap per trace")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every decode")
    parser.add_argument("--overhead-n", type=int, default=40, help="prompts timed with and without proofs")
    parser.add_argument("--cover-last", action=argparse.BooleanOptionalAction, default=True,
                        help="feed the last sampled token once more so the proof covers every reply token "
                             "(what the engine does); --no-cover-last is plain TOPLOC coverage")
    parser.add_argument("--bf16-n", type=int, default=50,
                        help="traces for the bf16 node case: bf16 decode verified by a bf16 prefill "
                             "(BF16_THRESHOLDS), honest, one-token and v1 (0 skips it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="prompt selection and tampering seed")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from inference.loading import load_model
    from inference.proofs import (
        BF16_THRESHOLDS,
        FP32_THRESHOLDS,
        ActivationProof,
        final_hidden_states,
        verify_proofs,
    )
    from inference.proofs_decode import decode
    from integrity_helpers import (
        alter_one_token,
        chat_prompt_ids,
        chitchat_conversations,
        make_finetuned_copy,
        weight_delta,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()[0]
    embedded = load_model("embedded:smollm2-135m-instruct")
    model, tokenizer = embedded.model, embedded.tokenizer
    tiny = load_model("tiny-random").model
    v1 = make_finetuned_copy(model, tokenizer, steps=3)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    conversations = chitchat_conversations(args.n, seed=args.seed)
    prompts = [chat_prompt_ids(tokenizer, c) for c in conversations]
    rng = random.Random(args.seed)

    def generate(m, prompt, seed, prove=True, cover_last=args.cover_last):
        return decode(m, prompt, args.max_new_tokens, prove=prove, cover_last=cover_last,
                      temperature=args.temperature, seed=seed, eos_token_id=eos)

    progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    honest, stats = [], {}
    with progress:
        # --------------------------------------------------------------------- honest traces
        task = progress.add_task("honest: generate", total=len(prompts))
        for i, prompt in enumerate(prompts):
            honest.append((prompt, generate(model, prompt, seed=i)))
            progress.advance(task)
        task = progress.add_task("honest: verify", total=len(honest))
        honest_results = []
        for prompt, run in honest:
            honest_results.append(verify_proofs(model, prompt, run.reply_ids, run.proof))
            progress.advance(task)

        # ------------- calibration of the last-token check: log p of every sampled reply token
        task = progress.add_task("honest: token log p", total=len(honest))
        sampled_logprobs, random_logprobs = [], []
        for prompt, run in honest:
            with torch.inference_mode():
                ids = prompt + run.reply_ids
                rows = final_hidden_states(model, ids[:-1])[len(prompt) - 1:]
                logprobs = torch.log_softmax(model.get_output_embeddings()(rows).float(), dim=-1)
                targets = torch.tensor(run.reply_ids)
                sampled_logprobs += logprobs.gather(1, targets[:, None])[:, 0].tolist()
                others = torch.tensor([rng.randrange(vocab) for _ in run.reply_ids])
                random_logprobs += logprobs.gather(1, others[:, None])[:, 0].tolist()
            progress.advance(task)

        # ------------------------------------------------------------------------- overhead
        task = progress.add_task("overhead: A/B", total=min(args.overhead_n, len(prompts)))
        variants = {"none": (False, False), "proof": (True, False), "proof+last": (True, True)}
        ab_seconds = dict.fromkeys(variants, 0.0)
        same_reply = 0
        for i, prompt in enumerate(prompts[: args.overhead_n]):
            names = list(variants)
            names = names[i % 3:] + names[: i % 3]          # rotate which variant runs first
            runs = {name: generate(model, prompt, seed=i, prove=variants[name][0], cover_last=variants[name][1])
                    for name in names}
            for name, run in runs.items():
                ab_seconds[name] += run.seconds
            same_reply += len({tuple(run.reply_ids) for run in runs.values()}) == 1
            progress.advance(task)

        # ------------------------------------------------------------------ tampered traces
        kinds: dict[str, list] = {}
        task = progress.add_task("tamper: one-token", total=len(honest))
        kinds["one-token"] = []
        last_position_cases = 0
        for prompt, run in honest:
            text_len = len(run.reply_ids) - (run.reply_ids[-1] == eos)
            position = rng.randrange(max(text_len, 1))
            last_position_cases += position == len(run.reply_ids) - 1
            altered = alter_one_token(run.reply_ids, position, vocab, rng)
            kinds["one-token"].append(verify_proofs(model, prompt, altered, run.proof))
            progress.advance(task)
        task = progress.add_task("tamper: prompt", total=len(honest))
        kinds["prompt"] = []
        for prompt, run in honest:
            altered = alter_one_token(prompt, rng.randrange(1, len(prompt)), vocab, rng)
            kinds["prompt"].append(verify_proofs(model, altered, run.reply_ids, run.proof))
            progress.advance(task)
        for name, other in (("tiny-random", tiny), ("v1", v1), ("bf16", bf16)):
            task = progress.add_task(f"tamper: {name}", total=len(prompts))
            kinds[name] = []
            for i, prompt in enumerate(prompts):
                run = generate(other, prompt, seed=i)
                proof = run.proof
                if name == "bf16":
                    proof = ActivationProof(**{**proof.__dict__, "dtype": "float32"})
                kinds[name].append(verify_proofs(model, prompt, run.reply_ids, proof))
                progress.advance(task)

        # ----------------------------------------- a node that serves bf16, checked in bf16
        bf16_results: dict[str, list] = {"honest": [], "one-token": [], "v1": []}
        if args.bf16_n:
            v1_bf16 = copy.deepcopy(v1).to(torch.bfloat16)
            task = progress.add_task("bf16 node", total=min(args.bf16_n, len(prompts)))
            for i, prompt in enumerate(prompts[: args.bf16_n]):
                run = generate(bf16, prompt, seed=i)
                bf16_results["honest"].append(verify_proofs(bf16, prompt, run.reply_ids, run.proof))
                text_len = len(run.reply_ids) - (run.reply_ids[-1] == eos)
                altered = alter_one_token(run.reply_ids, rng.randrange(max(text_len, 1)), vocab, rng)
                bf16_results["one-token"].append(verify_proofs(bf16, prompt, altered, run.proof))
                run = generate(v1_bf16, prompt, seed=i)
                bf16_results["v1"].append(verify_proofs(bf16, prompt, run.reply_ids, run.proof))
                progress.advance(task)

    # ----------------------------------------------------------------------------- figures
    reply_tokens = sum(len(run.reply_ids) for _, run in honest)
    gen_seconds = sum(run.seconds for _, run in honest)
    proof_seconds = sum(run.proof_seconds for _, run in honest)
    verify_seconds = sum(r.seconds for r in honest_results)
    proof_bytes = sum(run.proof.nbytes for _, run in honest)
    decode_chunks = sum(len(run.proof.chunks) - 1 for _, run in honest)

    def worst(results, attribute):
        return max((getattr(c, attribute) for r in results for c in r.chunks), default=0)

    def weakest_rejection(results):
        """The smallest deviation among rejected traces that were rejected by the chunk statistics."""
        by_stats = [r for r in results if r.chunks and not all(c.accepted for c in r.chunks)]
        if not by_stats:
            return None
        def deviation(r):
            c = max(r.chunks, key=lambda c: (c.exp_mismatches, c.mant_err_mean))
            return (c.exp_mismatches, c.mant_err_mean)
        return min(deviation(r) for r in by_stats)

    stats = {
        "command": " ".join(["bench/bench_integrity.py", *sys.argv[1:]]),
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "threads": torch.get_num_threads(),
        "loadavg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "thresholds": FP32_THRESHOLDS.__dict__,
        "v1_relative_weight_delta": weight_delta(model, v1),
        "honest": {
            "traces": len(honest),
            "false_rejections": sum(not r.accepted for r in honest_results),
            "rejection_reasons": [r.reason for r in honest_results if not r.accepted],
            "max_exp_mismatches": worst(honest_results, "exp_mismatches"),
            "max_mant_err_mean": worst(honest_results, "mant_err_mean"),
            "max_mant_err_median": worst(honest_results, "mant_err_median"),
            "min_last_token_logprob": min(
                (r.last_token_logprob for r in honest_results if r.last_token_logprob is not None), default=None),
            "mean_prompt_tokens": statistics.mean(len(p) for p, _ in honest),
            "mean_reply_tokens": reply_tokens / len(honest),
        },
        "tampered": {
            name: {
                "traces": len(results),
                "false_acceptances": sum(r.accepted for r in results),
                "rejected_by_layout": sum(not r.accepted and not r.chunks for r in results),
                "rejected_by_last_token_check": sum(
                    not r.accepted and r.chunks and all(c.accepted for c in r.chunks) for r in results),
                "weakest_rejection_exp_mismatches_mant_mean": weakest_rejection(results),
            }
            for name, results in kinds.items()
        },
        "one_token_last_position_cases": last_position_cases,
        "last_token_check_calibration": {
            "sampled_tokens": len(sampled_logprobs),
            "sampled_min_logprob": min(sampled_logprobs),
            "sampled_quantiles_0.1_1_5_pct": [
                sorted(sampled_logprobs)[int(q * len(sampled_logprobs))] for q in (0.001, 0.01, 0.05)],
            "sampled_below": {t: sum(v < t for v in sampled_logprobs) for t in (-12, -16, -20, -24)},
            "random_tokens_at_or_above": {t: sum(v >= t for v in random_logprobs) for t in (-12, -16, -20, -24)},
            "random_tokens": len(random_logprobs),
        },
        "bf16_node": {
            "thresholds": BF16_THRESHOLDS.__dict__,
            "traces": len(bf16_results["honest"]),
            "honest_false_rejections": sum(not r.accepted for r in bf16_results["honest"]),
            "honest_max_exp_mismatches": worst(bf16_results["honest"], "exp_mismatches"),
            "honest_max_mant_err_mean": worst(bf16_results["honest"], "mant_err_mean"),
            "honest_max_mant_err_median": worst(bf16_results["honest"], "mant_err_median"),
            "one_token_false_acceptances": sum(r.accepted for r in bf16_results["one-token"]),
            "v1_false_acceptances": sum(r.accepted for r in bf16_results["v1"]),
            "v1_weakest_rejection": weakest_rejection(bf16_results["v1"]),
        },
        "proof_bytes_per_reply_token": proof_bytes / reply_tokens,
        "proof_bytes_per_trace": proof_bytes / len(honest),
        "decode_chunks_per_trace": decode_chunks / len(honest),
        "cover_last": args.cover_last,
        "overhead_ab": {
            "prompts": min(args.overhead_n, len(prompts)),
            "seconds": ab_seconds,
            "overhead_proof": ab_seconds["proof"] / ab_seconds["none"] - 1 if ab_seconds["none"] else None,
            "overhead_proof_and_last_step": (ab_seconds["proof+last"] / ab_seconds["none"] - 1
                                             if ab_seconds["none"] else None),
            "identical_replies": same_reply,
        },
        "overhead_in_hook_and_builder": proof_seconds / (gen_seconds - proof_seconds),
        "generation_seconds": gen_seconds,
        "generation_tokens_per_second": reply_tokens / gen_seconds,
        "verification_seconds": verify_seconds,
        "verification_speedup_total": gen_seconds / verify_seconds,
        "verification_speedup_median": statistics.median(
            run.seconds / r.seconds for (_, run), r in zip(honest, honest_results)),
        "wall_seconds": time.time() - started,
    }
    print(json.dumps(stats, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
