"""Generate, inspect and benchmark rollout files (python -m jackpot.rollout, jackpot rollout).

generate  roll out the rollout model of a run config (--config, as for fit) on its task's
          train split, score, write a file; without --config, a tiny model from flags
inspect   print a readable summary of a rollout file
bench     generated tokens/s of the engine, next to model.generate, for a model size

Bad input (unknown flags, missing files, malformed rollout files) exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jackpot.rollout.batch import left_pad
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.files import task_source
from jackpot.rollout.io import load_rollouts, save_rollouts
from jackpot.tasks.datasets import load_examples
from jackpot.tasks.rewards import checked_reward, get_reward
from jackpot.tasks.synthetic import TASKS, Example, TaskSpec, make_task
from jackpot.tasks.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel


_MODEL_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--family", {"choices": ["qwen2", "llama"], "default": "qwen2"}),
    ("--hidden-size", {"type": int, "default": 64}),
    ("--num-layers", {"type": int, "default": 2}),
    ("--num-heads", {"type": int, "default": 4}),
    ("--model-seed", {"type": int, "default": 0, "help": "random-init seed"}),
)
"""A tiny model (generate without --config, and bench)."""

_FLAG_ONLY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--task", {"choices": sorted(TASKS), "default": "addition"}),
    ("--dataset", {"type": Path, "default": None, "help": "JSONL/Parquet file, not --task"}),
    ("--prompt-field", {"default": "prompt"}),
    ("--answer-field", {"default": "answer"}),
    ("--n-prompts", {"type": int, "default": 8}),
    ("--group-size", {"type": int, "default": 4}),
    ("--reward", {"default": "exact_match", "help": "name in jackpot.rewards"}),
    ("--warmstart-steps", {"type": int, "default": 0, "help": "SFT steps first (0 = random)"}),
    ("--cache-dir", {"type": Path, "default": None, "help": "warm-start weight cache"}),
    *_MODEL_FLAGS,
    ("--temperature", {"type": float, "default": 1.0, "help": "0 = greedy"}),
    ("--top-k", {"type": int, "default": 0, "help": "0 = off"}),
    ("--top-p", {"type": float, "default": 1.0, "help": "1 = off"}),
    ("--max-new-tokens", {"type": int, "default": 8}),
    ("--logprobs-k", {"type": int, "default": 8, "help": "top log-probs kept per token"}),
)
"""generate's flags without --config; with it, the config's keys say all of this."""


def _add_flags(
    group: argparse._ArgumentGroup, flags: Sequence[tuple[str, dict[str, Any]]], defaults: bool
) -> None:
    """Add ``flags``; ``defaults=False`` leaves unset ones out of the namespace (to spot them)."""
    for flag, options in flags:
        options = dict(options)
        default = options.pop("default")
        shown = f"default: {default}" if default is not None else "default: none"
        options["help"] = f"{options['help']}; {shown}" if "help" in options else shown
        group.add_argument(flag, default=default if defaults else argparse.SUPPRESS, **options)


def build_parser(prog: str = "python -m jackpot.rollout") -> argparse.ArgumentParser:
    """The argparse parser with the three sub-commands."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser(
        "generate",
        help="roll out a model on a task and write a rollout file",
        description="Roll out the rollout model of --config (task, model, warm start, sampling "
        "and rollout.prompts_per_step x rollout.group_size from the config and its dotted "
        "overrides, as for fit) on the train split, score and write one file. Without "
        "--config, the flags of the last group describe a tiny model and the task.",
    )
    gen.add_argument("--out", type=Path, required=True, help="rollout file to write")
    gen.add_argument("--config", help="run config (YAML), the one fit is given")
    gen.add_argument("overrides", nargs="*", help="dotted overrides of --config's keys")
    gen.add_argument(
        "--split", choices=["train", "eval"], default=None, help="default: train with --config"
    )
    gen.add_argument(
        "--offset",
        type=int,
        default=0,
        help="first prompt of the split (wraps around); give each file its own, e.g. "
        "step * prompts, so files for different steps do not share prompts; default: 0",
    )
    gen.add_argument(
        "--seed", type=int, default=None, help="sampling seed; default: run.seed, else 0"
    )
    _add_flags(gen.add_argument_group("without --config"), _FLAG_ONLY, defaults=False)

    ins = commands.add_parser("inspect", help="summarise a rollout file")
    ins.add_argument("path", type=Path)
    ins.add_argument("--show", type=int, default=4, help="decoded examples to print")

    bench = commands.add_parser("bench", help="generated tokens/s of the engine vs generate()")
    bench.add_argument("--n-seqs", type=int, default=64)
    bench.add_argument("--tokens", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=5)
    _add_flags(bench.add_argument_group("model"), _MODEL_FLAGS, defaults=True)
    return parser


def _select(examples: list[Example], n: int, offset: int, what: str) -> list[Example]:
    """``n`` consecutive problems from ``offset`` on, wrapping around the end of the split."""
    if not 1 <= n <= len(examples):
        raise ValueError(f"{what} must be in [1, {len(examples)}] (the split's size), got {n}")
    if offset < 0:
        raise ValueError(f"--offset must be >= 0, got {offset}")
    return [examples[(offset + i) % len(examples)] for i in range(n)]


def _examples(args: argparse.Namespace) -> list[Example]:
    """``--n-prompts`` problems of the dataset or synthetic split, from ``--offset`` on."""
    if args.dataset is not None:
        examples = load_examples(args.dataset, args.prompt_field, args.answer_field)
    else:
        splits = make_task(TaskSpec(name=args.task))
        examples = splits.train if args.split == "train" else splits.eval
    return _select(examples, args.n_prompts, args.offset, "--n-prompts")


def _model(args: argparse.Namespace, tokenizer: CharTokenizer) -> PreTrainedModel:
    """Random or warm-started tiny model from the model flags."""
    from jackpot.config import ModelConfig
    from jackpot.warmstart import SFTConfig, make_model

    model = ModelConfig(
        family=args.family,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        seed=args.model_seed,
    )
    steps = getattr(args, "warmstart_steps", 0)  # bench has no warm-start flags
    task = TaskSpec(name=args.task) if steps else None
    return make_model(
        model,
        "rollout_model",
        tokenizer,
        task,
        SFTConfig(steps=steps),
        getattr(args, "cache_dir", None),
    )


@dataclass
class _Generation:
    """Everything one ``generate`` call needs, from a config or from flags."""

    tokenizer: Any
    model: PreTrainedModel
    examples: list[Example]
    group_size: int
    params: SamplingParams
    reward: str
    seed: int
    metadata: dict[str, Any]


def _from_config(args: argparse.Namespace) -> _Generation:
    """The rollout model, task, sampling and group shape of the run config ``--config``."""
    from jackpot.config import load_config
    from jackpot.fit import _task_examples, _tokenizer
    from jackpot.rollout.factory import sampling_params
    from jackpot.warmstart import run_model

    given = sorted(
        flag for flag, _ in _FLAG_ONLY if flag.lstrip("-").replace("-", "_") in vars(args)
    )
    if given:
        raise ValueError(
            f"{', '.join(given)} cannot be combined with --config, which sets the task, model "
            "and sampling; override its keys instead (e.g. rollout.temperature=0.7, "
            "rollout.prompts_per_step=32)"
        )
    cfg = load_config(args.config, args.overrides, check_devices=False)
    tokenizer = _tokenizer(cfg)
    train, evals = _task_examples(cfg)
    split = args.split or "train"
    r = cfg.rollout
    examples = _select(
        train if split == "train" else evals, r.prompts_per_step, args.offset,
        "rollout.prompts_per_step",
    )  # fmt: skip
    params = sampling_params(r, tokenizer.eos_token_id)
    seed = cfg.run.seed if args.seed is None else args.seed
    metadata = {
        "source": task_source(cfg.task, split),
        "config": args.config,
        "overrides": list(args.overrides),
        "model": asdict(cfg.rollout_model),
        "warmstart_steps": cfg.warmstart.steps,
        "offset": args.offset,
        "seed": seed,
    }
    model = run_model(cfg, "rollout_model", tokenizer)
    return _Generation(
        tokenizer,
        model,
        examples,
        r.group_size,
        params,
        cfg.task.reward,
        seed,
        metadata,
    )


def _from_flags(args: argparse.Namespace) -> _Generation:
    """A tiny model and a task described by flags (no config)."""
    for flag, options in _FLAG_ONLY:
        vars(args).setdefault(flag.lstrip("-").replace("-", "_"), options["default"])
    split = args.split or "eval"
    args.split = split
    tokenizer = CharTokenizer()
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=(tokenizer.eos_token_id,),
        logprobs_k=args.logprobs_k,
    )
    source = (
        f"{args.dataset.suffix.lstrip('.')}:{args.dataset.name}:all"
        if args.dataset
        else f"synthetic:{args.task}:{split}"
    )
    metadata = {
        "source": source,
        "model": {k: getattr(args, k) for k in ("family", "hidden_size", "num_layers")},
        "warmstart_steps": args.warmstart_steps,
        "offset": args.offset,
        "seed": args.seed or 0,
    }
    examples = _examples(args)
    model = _model(args, tokenizer)
    return _Generation(
        tokenizer, model, examples, args.group_size, params, args.reward, args.seed or 0, metadata
    )


def cmd_generate(args: argparse.Namespace) -> None:
    """Roll out, score with the reward and write the file."""
    from jackpot.rollout.hf import HFRolloutEngine

    g = _from_config(args) if args.config or args.overrides else _from_flags(args)
    reward_fn = checked_reward(g.reward, get_reward(g.reward))
    prompt_ids = [g.tokenizer.encode(e.prompt) for e in g.examples]
    engine = HFRolloutEngine(g.model, g.tokenizer.pad_token_id)
    batch = engine.generate(
        prompt_ids, g.group_size, g.params, torch.Generator().manual_seed(g.seed)
    )
    prompts = [e.prompt for e in g.examples for _ in range(g.group_size)]
    answers = [e.answer for e in g.examples for _ in range(g.group_size)]
    completions = [g.tokenizer.decode(r) for r in batch.response_lists(without_stop=True)]
    rewards = reward_fn(prompts, completions, answers)
    batch = batch.with_texts(prompts, answers).with_rewards(rewards)
    tokenizer_info = (
        {"type": "char", "alphabet": g.tokenizer.alphabet}
        if isinstance(g.tokenizer, CharTokenizer)
        else {"type": "transformers", "name_or_path": str(g.tokenizer.name_or_path)}
    )
    metadata = {**g.metadata, "reward": g.reward, "tokenizer": tokenizer_info}
    path = save_rollouts(replace(batch, metadata=metadata), args.out)
    print(
        f"wrote {batch.num_sequences} rollouts ({batch.num_tokens} tokens, source "
        f"{metadata['source']}) to {path}"
    )


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
    """Best-of-``--repeats`` tokens/s of the engine's decode loop and of ``model.generate``."""
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

    def loop(engine: HFRolloutEngine) -> Callable[[], object]:
        return lambda: engine.generate(prompts, 1, params, torch.Generator().manual_seed(0))

    def hf_generate() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    tokens = args.n_seqs * args.tokens
    for name, fn in (("engine decode loop", loop(engine)), ("model.generate", hf_generate)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        print(f"{name:20s} {best * 1000:8.1f} ms  {tokens / best:9.0f} tokens/s")


def main(argv: Sequence[str] | None = None, prog: str = "python -m jackpot.rollout") -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    command = {"generate": cmd_generate, "inspect": cmd_inspect, "bench": cmd_bench}
    try:
        command[args.command](args)
    except (FileNotFoundError, ValueError) as err:  # includes the format and config errors
        message = str(err)
        if args.command == "inspect" and str(args.path) not in message:
            message = f"{args.path}: {message}"
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
