"""``python -m jackpot.rollout``: generate, inspect and benchmark rollout files.

generate  roll out a tiny (random or warm-started) model on a task, score, write a file
inspect   print a readable summary of a rollout file
bench     generated tokens/s of the engine, next to ``model.generate``, for a model size

Bad input (unknown flags, missing files, malformed rollout files) exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jackpot.rollout.batch import left_pad
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.io import load_rollouts, save_rollouts
from jackpot.tasks.datasets import load_examples
from jackpot.tasks.rewards import get_reward
from jackpot.tasks.synthetic import TASKS, Example, TaskSpec, make_task
from jackpot.tasks.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags describing a tiny model (shared by generate and bench)."""
    group = parser.add_argument_group("model")
    group.add_argument("--family", choices=["qwen2", "llama"], default="qwen2")
    group.add_argument("--hidden-size", type=int, default=64)
    group.add_argument("--num-layers", type=int, default=2)
    group.add_argument("--num-heads", type=int, default=4)
    group.add_argument("--model-seed", type=int, default=0, help="random-init seed")


def _add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Flags of :class:`SamplingParams`."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--logprobs-k", type=int, default=8, help="top log-probs kept per token")
    group.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the three sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m jackpot.rollout", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="roll out a tiny model and write a rollout file")
    gen.add_argument("--out", type=Path, required=True, help="rollout file to write")
    gen.add_argument("--task", choices=sorted(TASKS), default="addition")
    gen.add_argument("--split", choices=["train", "eval"], default="eval")
    gen.add_argument("--dataset", type=Path, help="JSONL/Parquet file instead of --task")
    gen.add_argument("--prompt-field", default="prompt")
    gen.add_argument("--answer-field", default="answer")
    gen.add_argument("--n-prompts", type=int, default=8)
    gen.add_argument("--group-size", type=int, default=4)
    gen.add_argument("--reward", default="exact_match", help="name in jackpot.rewards")
    gen.add_argument(
        "--warmstart-steps", type=int, default=0, help="SFT steps on the task first (0 = random)"
    )
    gen.add_argument("--cache-dir", type=Path, default=None, help="warm-start weight cache")
    _add_model_flags(gen)
    _add_sampling_flags(gen, max_new_tokens=8)

    ins = commands.add_parser("inspect", help="summarise a rollout file")
    ins.add_argument("path", type=Path)
    ins.add_argument("--show", type=int, default=4, help="decoded examples to print")

    bench = commands.add_parser("bench", help="generated tokens/s of the engine vs generate()")
    bench.add_argument("--n-seqs", type=int, default=64)
    bench.add_argument("--tokens", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=5)
    _add_model_flags(bench)
    return parser


def _examples(args: argparse.Namespace) -> list[Example]:
    """The first ``--n-prompts`` problems of the dataset or synthetic split."""
    if args.dataset is not None:
        examples = load_examples(args.dataset, args.prompt_field, args.answer_field)
    else:
        splits = make_task(TaskSpec(name=args.task))
        examples = splits.train if args.split == "train" else splits.eval
    if not 1 <= args.n_prompts <= len(examples):
        raise ValueError(f"--n-prompts must be in [1, {len(examples)}], got {args.n_prompts}")
    return examples[: args.n_prompts]


def _model(args: argparse.Namespace, tokenizer: CharTokenizer) -> PreTrainedModel:
    """Random or warm-started tiny model from the model flags."""
    from jackpot.models import ModelSpec, build_model
    from jackpot.warmstart import SFTConfig, warm_start

    spec = ModelSpec(
        vocab_size=tokenizer.vocab_size,
        family=args.family,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        seed=args.model_seed,
    )
    if getattr(args, "warmstart_steps", 0) > 0:
        config = SFTConfig(steps=args.warmstart_steps)
        return warm_start(spec, TaskSpec(name=args.task), tokenizer, config, args.cache_dir).model
    return build_model(spec)


def cmd_generate(args: argparse.Namespace) -> None:
    """Roll out, score with ``--reward`` and write the file."""
    from jackpot.rollout.hf import HFRolloutEngine

    tokenizer = CharTokenizer()
    examples = _examples(args)
    reward_fn = get_reward(args.reward)
    prompt_ids = [tokenizer.encode(e.prompt) for e in examples]
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=(tokenizer.eos_token_id,),
        logprobs_k=args.logprobs_k,
    )
    engine = HFRolloutEngine(_model(args, tokenizer), tokenizer.pad_token_id)
    batch = engine.generate(
        prompt_ids, args.group_size, params, torch.Generator().manual_seed(args.seed)
    )
    prompts = [e.prompt for e in examples for _ in range(args.group_size)]
    answers = [e.answer for e in examples for _ in range(args.group_size)]
    completions = [tokenizer.decode(r) for r in batch.response_lists()]
    rewards = reward_fn(prompts, completions, answers)
    batch = batch.with_texts(prompts, answers).with_rewards(rewards)
    metadata = {
        "source": str(args.dataset) if args.dataset else f"synthetic:{args.task}:{args.split}",
        "reward": args.reward,
        "tokenizer": {"type": "char", "alphabet": tokenizer.alphabet},
        "model": {k: getattr(args, k) for k in ("family", "hidden_size", "num_layers")},
        "warmstart_steps": args.warmstart_steps,
        "seed": args.seed,
    }
    path = save_rollouts(replace(batch, metadata=metadata), args.out)
    print(f"wrote {batch.num_sequences} rollouts ({batch.num_tokens} tokens) to {path}")


def cmd_inspect(args: argparse.Namespace) -> None:
    """Print shapes, sampling parameters, statistics and a few decoded examples."""
    batch = load_rollouts(args.path)
    mask = batch.response_mask.bool()
    n, t, k = batch.topk_ids.shape
    print(f"file        {args.path}")
    print(f"shapes      N={n} P={batch.prompt_ids.shape[1]} T={t} k={k} vocab={batch.vocab_size}")
    print(f"groups      {batch.group_ids.unique().numel()} prompts")
    print(f"sampling    {batch.params.to_dict()}")
    mean_len = batch.response_lengths.float().mean()
    print(f"tokens      {batch.num_tokens} (mean length {mean_len:.2f})")
    print(f"finished    {batch.finished.float().mean():.1%} ended by a stop token")
    print(f"logp_inf    mean {batch.logp_inf[mask].mean():.4f} per generated token")
    if batch.rewards is not None:
        print(f"reward      mean {batch.rewards.mean():.4f}")
    print(f"metadata    {batch.metadata}")
    tokenizer_info = batch.metadata.get("tokenizer", {})
    tokenizer = (
        CharTokenizer(tokenizer_info["alphabet"]) if tokenizer_info.get("type") == "char" else None
    )
    for i, ids in enumerate(batch.response_lists()[: args.show]):
        prompt = batch.prompts[i] if batch.prompts else batch.prompt_ids[i].tolist()
        response = tokenizer.decode(ids) if tokenizer else ids
        reward = "" if batch.rewards is None else f"  reward={batch.rewards[i]:.2f}"
        answer = "" if batch.answers is None else f"  answer={batch.answers[i]!r}"
        print(f"[{i}] {prompt!r} -> {response!r}{answer}{reward}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Best-of-``--repeats`` tokens/s of the manual decode loop and of ``model.generate``."""
    from transformers import GenerationConfig

    from jackpot.rollout.hf import HFRolloutEngine

    tokenizer = CharTokenizer()
    model = _model(args, tokenizer).eval()
    prompts = [tokenizer.encode(f"{i}+{3 * i}=") for i in range(args.n_seqs)]
    params = SamplingParams(max_new_tokens=args.tokens, logprobs_k=8)  # no stop: full length
    engine = HFRolloutEngine(model, tokenizer.pad_token_id)
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    config = GenerationConfig(
        do_sample=True, top_k=0, top_p=1.0, max_new_tokens=args.tokens, min_new_tokens=0,
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip

    def manual() -> None:
        engine.generate(prompts, 1, params, torch.Generator().manual_seed(0))

    def hf_generate() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    tokens = args.n_seqs * args.tokens
    for name, fn in (("manual decode loop", manual), ("model.generate", hf_generate)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        print(f"{name:20s} {best * 1000:8.1f} ms  {tokens / best:9.0f} tokens/s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"generate": cmd_generate, "inspect": cmd_inspect, "bench": cmd_bench}
    try:
        command[args.command](args)
    except (FileNotFoundError, ValueError) as err:  # includes the format errors
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
