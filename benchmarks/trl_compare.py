"""TRL's GRPOTrainer vs ``python -m jackpot.fit`` on one workload, and decoupled vs on-policy.

``python -m benchmarks.trl_compare [--out DIR] [--trl-python PATH] [--rounds R] [--quick]``

Section A (the speed workload): one seed-0 Qwen2 (hidden 128 x 2 layers) saved with a
small character tokenizer built here (nothing is downloaded), 512 ``AB+CD=`` addition prompts
as a JSONL file, 8 prompts x 8 samples per step, 16 new tokens at temperature 1 without
truncation, one optimiser step per RL step, exact-match reward, the same learning rate,
2 torch threads. TRL runs ``GRPOTrainer`` on it (in the interpreter ``--trl-python``, which
must have ``trl`` installed), jackpot runs ``jackpot.fit`` in on-policy mode with
``policy.path`` pointing at the same directory.

Step period from whole processes, so nothing between steps escapes: ``(time of an N1-step run
- time of an N0-step run) / (N1 - N0)``, per framework and per round, runs interleaved
(jackpot N0, TRL N0, jackpot N1, TRL N1, the order flipped every round) after one warm-up run
of each; the paired ratio is TRL's period over jackpot's in the same round. Generated tokens
per step come from each framework's own per-step log (jackpot ``response/length``, TRL
``completions/mean_length``), so tokens/s = tokens per step / period. CPU seconds per step
(user + system of the child processes) are reported beside the wall-clock figures: on a
shared machine they move less with other people's load. So does the in-run period, the
median time between two consecutive per-step logs inside the long run (jackpot's
``perf/period_s``, a TRL callback's clock), which no process start or exit reaches.

Section B: jackpot's decoupled step with a training rollout model and top-k OBRS
(``sampler.name=obrs sampler.topk=8 sampler.budget=0.9``) against on-policy, at the sizes of
``benchmarks/e2e.py`` (policy 512 x 6, rollout model 128 x 2, 8 prompts x 4, 48 new tokens),
measured the same way.

The parent imports only the standard library; the TRL worker (``trl`` subcommand) imports
trl, transformers and torch, never jackpot, so it runs in an environment of its own.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""Repository root (subprocesses run from here)."""

WORKLOAD: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "model_seed": 0,
    "num_prompts": 512,
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 16,
    "lr": 1e-5,
    "threads": 2,
    "seed": 0,
}
"""Section A's workload, shared by both frameworks."""

CHARS = "0123456789+="
"""The tokenizer's ordinary tokens, one per character (after ``<pad>``, ``<eos>``, ``<unk>``)."""

JACKPOT_ON_POLICY = [
    "algo.mode=on_policy",
    "sampler.name=none",
    "sampler.budget=null",
    "sampler.c1=null",
    "sampler.p_target=null",
]
"""On-policy overrides of ``configs/default.yaml`` (its OBRS keys cleared), as in ``e2e.py``."""

DECOUPLED_TOPK = [
    "algo.mode=decoupled",
    "algo.train_rollout=true",
    "sampler.name=obrs",
    "sampler.topk=8",
    "sampler.budget=0.9",
]
"""Section B's decoupled mode: training rollout model, top-k OBRS at budget 0.9."""

QUIET = {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
"""Environment of every timed child (no tokenizer thread pool, no warning output)."""


# ---------------------------------------------------------------------------- the workload


def build_tokenizer() -> Any:
    """A character-level fast tokenizer over :data:`CHARS` with pad, EOS and unknown tokens."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def addition_examples(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct two-digit ``AB+CD=`` prompts with their sums, drawn with ``seed``."""
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], n)
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]


def prepare(work: Path) -> dict[str, str]:
    """Write the checkpoint + tokenizer directory and the prompts file under ``work``."""
    from jackpot.models import ModelSpec, build_model

    work = work.resolve()
    model_dir, data = work / "model", work / "prompts.jsonl"
    if not (model_dir / "config.json").is_file():
        tokenizer = build_tokenizer()
        spec = ModelSpec(
            vocab_size=len(tokenizer),
            hidden_size=WORKLOAD["hidden_size"],
            num_layers=WORKLOAD["num_layers"],
            num_heads=WORKLOAD["num_heads"],
            seed=WORKLOAD["model_seed"],
        )
        model = build_model(spec)
        for config in (model.config, model.generation_config):
            config.pad_token_id = tokenizer.pad_token_id
            config.eos_token_id = tokenizer.eos_token_id
            config.bos_token_id = None
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    if not data.is_file():
        examples = addition_examples(WORKLOAD["num_prompts"], WORKLOAD["seed"])
        data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return {"model": str(model_dir), "data": str(data)}


def jackpot_cmd(paths: dict[str, str], steps: int, run_dir: Path) -> list[str]:
    """``jackpot.fit`` on section A's workload in on-policy mode, ``steps`` RL steps."""
    w = WORKLOAD
    overrides = [
        f"policy.path={paths['model']}",
        "task.name=jsonl",
        f"task.path={paths['data']}",
        "task.num_eval=1",
        "task.reward=exact_match",
        f"rollout.prompts_per_step={w['prompts_per_step']}",
        f"rollout.group_size={w['group_size']}",
        f"rollout.max_new_tokens={w['max_new_tokens']}",
        "rollout.temperature=1.0",
        "rollout.top_k=0",
        "rollout.top_p=1.0",
        "algo.minibatches=1",
        "algo.ppo_epochs=1",
        f"policy_optim.lr={w['lr']}",
        "policy_optim.warmup_steps=0",
        "policy_optim.weight_decay=0.0",
        "policy_optim.grad_clip=1.0",
        f"trainer.num_threads={w['threads']}",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=100000",
        "warmstart.steps=0",
        "warmstart.policy_steps=0",
        f"run.seed={w['seed']}",
        "run.plot=false",
        *JACKPOT_ON_POLICY,
    ]
    return [*_fit(run_dir, steps), *overrides]


def _fit(run_dir: Path, steps: int) -> list[str]:
    """The start of a ``jackpot.fit`` command line (main venv's interpreter)."""
    config = ROOT / "configs" / "default.yaml"
    return [
        sys.executable, "-m", "jackpot.fit", "--config", str(config),
        f"run.dir={run_dir}", f"trainer.max_steps={steps}",
    ]  # fmt: skip


def trl_cmd(trl_python: str, paths: dict[str, str], steps: int, out: Path) -> list[str]:
    """The TRL worker of this module in ``trl_python``."""
    return [
        trl_python, "-m", "benchmarks.trl_compare", "trl", "--model", paths["model"],
        "--data", paths["data"], "--steps", str(steps), "--out", str(out),
        "--threads", str(WORKLOAD["threads"]),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- TRL worker


def trl_worker(model: str, data: str, steps: int, out: Path, threads: int) -> None:
    """Train ``steps`` GRPO steps with TRL on section A's workload; write its per-step log."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    log_times: list[float] = []

    class StepClock(TrainerCallback):  # type: ignore[misc]
        """The time of each per-step log call (``logging_steps=1``)."""

        def on_log(self, *args: Any, **kwargs: Any) -> None:
            log_times.append(time.perf_counter())

    w = WORKLOAD
    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line]

    def exact_match(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]

    args = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        per_device_train_batch_size=w["prompts_per_step"] * w["group_size"],
        num_generations=w["group_size"],
        max_completion_length=w["max_new_tokens"],
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_iterations=1,
        max_steps=steps,
        learning_rate=w["lr"],
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,  # as jackpot (TRL's default recomputes activations)
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=w["seed"],
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, local_files_only=True),
        processing_class=AutoTokenizer.from_pretrained(model, local_files_only=True),
        reward_funcs=exact_match,
        args=args,
        train_dataset=Dataset.from_list(rows),
        callbacks=[StepClock()],
    )
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    log = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    facts = {"optim": str(args.optim), "loss_type": args.loss_type, "beta": args.beta}
    (out / "log.json").write_text(json.dumps({"log": log, "args": facts, "log_times": log_times}))


# ---------------------------------------------------------------------------- timing


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` from the repository root; wall-clock and CPU seconds (children's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **QUIET, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (rc={proc.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0]}


def jackpot_tokens_per_step(run_dir: Path, rows: int) -> float:
    """Mean generated tokens per RL step of a jackpot run (``response/length`` x rows)."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as handle:
        lengths = [float(r["response/length"]) for r in csv.DictReader(handle)]
    return statistics.mean(lengths) * rows


def trl_tokens_per_step(out: Path, rows: int) -> float:
    """Mean generated tokens per step of a TRL run (``completions/mean_length`` x rows)."""
    log = json.loads((out / "log.json").read_text())["log"]
    return statistics.mean(r["completions/mean_length"] for r in log) * rows


SKIP_STEPS = 3
"""Leading step periods an in-run median leaves out (first calls, allocator warm-up)."""


def inrun_period(step_periods: list[float]) -> float:
    """Median of a run's own per-step periods after the first :data:`SKIP_STEPS` (all of them
    when the run is shorter): no process start or exit in it, so start-up stalls do not
    reach it, unlike the N1 - N0 difference."""
    kept = step_periods[SKIP_STEPS:] or step_periods
    return statistics.median(kept) if kept else math.nan


def jackpot_step_periods(run_dir: Path) -> list[float]:
    """``perf/period_s`` of every step of a jackpot run (end of one step's metrics to the
    next's: everything between two steps included)."""
    import csv

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(r["perf/period_s"]) for r in csv.DictReader(handle) if r.get("perf/period_s")]


def trl_step_periods(out: Path) -> list[float]:
    """Time between consecutive per-step log calls of a TRL run."""
    times = json.loads((out / "log.json").read_text()).get("log_times", [])
    return [b - a for a, b in itertools.pairwise(times)]


def periods(runs: dict[int, dict[str, float]], n0: int, n1: int) -> dict[str, float]:
    """Per-step wall-clock and CPU seconds from an ``n0``- and an ``n1``-step run."""
    return {
        "period_s": (runs[n1]["wall_s"] - runs[n0]["wall_s"]) / (n1 - n0),
        "cpu_period_s": (runs[n1]["cpu_s"] - runs[n0]["cpu_s"]) / (n1 - n0),
    }


def paired_summary(rounds: list[dict[str, dict[str, float]]], base: str, other: str) -> dict:
    """Medians and ranges of each side's period and of the paired ratio other/base per round.

    ``rounds[r][name]`` holds ``period_s``, ``cpu_period_s``, ``inrun_period_s`` and
    ``tokens_per_step``; a ratio
    above 1 means ``base`` takes less time per step (is faster) than ``other``.
    """

    def stats(values: list[float]) -> dict[str, Any]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    out: dict[str, Any] = {}
    for name in (base, other):
        out[name] = {
            key: stats([r[name][key] for r in rounds])
            for key in ("period_s", "cpu_period_s", "inrun_period_s", "tokens_per_step")
        }
        out[name]["tokens_per_s"] = stats(
            [r[name]["tokens_per_step"] / r[name]["period_s"] for r in rounds]
        )
    out["period_ratio"] = stats([r[other]["period_s"] / r[base]["period_s"] for r in rounds])
    out["cpu_period_ratio"] = stats(
        [r[other]["cpu_period_s"] / r[base]["cpu_period_s"] for r in rounds]
    )
    out["inrun_period_ratio"] = stats(
        [r[other]["inrun_period_s"] / r[base]["inrun_period_s"] for r in rounds]
    )
    out["tokens_per_s_ratio"] = stats(
        [
            (r[base]["tokens_per_step"] / r[base]["period_s"])
            / (r[other]["tokens_per_step"] / r[other]["period_s"])
            for r in rounds
        ]
    )
    out["rounds"] = rounds
    return out


def interleaved_rounds(
    names: list[str],
    one: Callable[[str, int, str], dict[str, float]],
    n0: int,
    n1: int,
    rounds: int,
) -> list[dict[str, dict[str, float]]]:
    """A warm-up run of each, then ``rounds`` rounds of N0- and N1-step runs of every name,
    the order reversed every other round so drifting load hits both sides alike; each round's
    per-step periods (N1 - N0 difference), tokens per step and load."""
    for name in names:
        one(name, n0, "warmup")
    results: list[dict[str, dict[str, float]]] = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        runs: dict[str, dict[int, dict[str, float]]] = {name: {} for name in order}
        for steps in (n0, n1):
            for name in order:
                runs[name][steps] = one(name, steps, f"r{r}")
        results.append(
            {
                name: {
                    **periods(runs[name], n0, n1),
                    "inrun_period_s": runs[name][n1]["inrun_period_s"],
                    "tokens_per_step": runs[name][n1]["tokens_per_step"],
                    "load": runs[name][n1]["load"],
                }
                for name in order
            }
        )
    return results


def section_a(work: Path, trl_python: str, n0: int, n1: int, rounds: int) -> dict[str, Any]:
    """TRL vs jackpot on-policy: interleaved rounds after one warm-up run of each."""
    paths = prepare(work)
    rows = WORKLOAD["prompts_per_step"] * WORKLOAD["group_size"]

    def one(name: str, steps: int, tag: str) -> dict[str, float]:
        out = work / "runs" / f"{name}-{tag}-{steps}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of an earlier one
        if name == "jackpot":
            res = timed(jackpot_cmd(paths, steps, out))
            res["tokens_per_step"] = jackpot_tokens_per_step(out, rows)
            res["inrun_period_s"] = inrun_period(jackpot_step_periods(out))
        else:
            res = timed(trl_cmd(trl_python, paths, steps, out))
            res["tokens_per_step"] = trl_tokens_per_step(out, rows)
            res["inrun_period_s"] = inrun_period(trl_step_periods(out))
        print(f"[trl_compare] {name:8s} {steps:3d} steps: {res['wall_s']:6.1f} s wall, "
              f"{res['cpu_s']:6.1f} s CPU, load {res['load']:.1f}", flush=True)  # fmt: skip
        return res

    results = interleaved_rounds(["jackpot", "trl"], one, n0, n1, rounds)
    trl_args = json.loads((work / "runs" / f"trl-r0-{n1}" / "log.json").read_text())["args"]
    summary = paired_summary(results, "jackpot", "trl")
    return {"n0": n0, "n1": n1, "workload": dict(WORKLOAD), "trl_args": trl_args, **summary}


def section_b(work: Path, n0: int, n1: int, rounds: int, sizes: dict[str, Any]) -> dict[str, Any]:
    """jackpot decoupled (training rollout model, top-k OBRS) vs on-policy, whole processes."""
    from benchmarks.e2e import COMMON, MODES, size_overrides

    base = [*COMMON, *size_overrides(**sizes)]
    modes = {"on_policy": MODES["on_policy"], "decoupled_topk": DECOUPLED_TOPK}
    rows = sizes["prompts_per_step"] * 4

    def one(mode: str, steps: int, tag: str) -> dict[str, float]:
        out = work / "runs" / f"{mode}-{tag}-{steps}"
        shutil.rmtree(out, ignore_errors=True)
        threads = f"trainer.num_threads={WORKLOAD['threads']}"
        res = timed([*_fit(out, steps), *base, *modes[mode], threads])
        res["tokens_per_step"] = jackpot_tokens_per_step(out, rows)
        res["inrun_period_s"] = inrun_period(jackpot_step_periods(out))
        print(f"[trl_compare] {mode:14s} {steps:2d} steps: {res['wall_s']:6.1f} s wall, "
              f"{res['cpu_s']:6.1f} s CPU, load {res['load']:.1f}", flush=True)  # fmt: skip
        return res

    results = interleaved_rounds(list(modes), one, n0, n1, rounds)
    summary = paired_summary(results, "decoupled_topk", "on_policy")
    return {
        "n0": n0,
        "n1": n1,
        "threads": WORKLOAD["threads"],
        "sizes": sizes,
        "overrides": base,
        "modes": modes,
        **summary,
    }


# ---------------------------------------------------------------------------- report


DIFFERENCES = [
    "Generation: TRL calls `model.generate` (transformers' sampler, DynamicCache, every row "
    "prefilled); jackpot's `hf` engine calls the model's forward with a DynamicCache too, but "
    "prefills each prompt once for its group, passes no attention mask when no prompt is "
    "padded, and drops stopped rows from the batch. Both sample from the full softmax at "
    "temperature 1 (TRL top_k=0).",
    "Training forward: TRL runs the model's forward over the padded batch (prompt + longest "
    "completion for every row); jackpot's `trainer.remove_padding` runs the same forward over "
    "the real tokens packed several sequences to a row (restarting position ids, so "
    "transformers masks block-causally), the output layer only where a response token is "
    "predicted; the same values and gradients. Both use the checkpoint's attention kernel "
    "(SDPA).",
    "Rewards: both score the completion text without its stop token with the same exact-match "
    "function (TRL decodes with `skip_special_tokens=True`, jackpot drops the stop token).",
    "Loss: TRL's default `loss_type='dapo'` (token-level normalisation over the global batch), "
    "beta = 0 (no reference model); jackpot's PPO-clip loss with token-mean aggregation and "
    "GRPO advantages. Same number of forward/backward passes per step.",
    "Optimiser: TRL `optim` as recorded above (transformers' default, fused AdamW on this "
    "torch); jackpot `torch.optim.AdamW(fused=True)` where the parameters allow it.",
    "Prompts: TRL samples from all 512; jackpot keeps 1 prompt out as its held-out split "
    "(`task.num_eval=1`, no evaluation runs). Both draw 8 prompts per step.",
    "Logging and checkpoints: TRL logs every step in memory, saves nothing; jackpot appends a "
    "`metrics.csv` row per step and writes one checkpoint at the end (in both the N0 and the "
    "N1 run, so it cancels in the period).",
    "Process start: Lightning vs transformers/accelerate/datasets imports and set-up differ; "
    "they cancel in the N1 - N0 difference.",
]
"""Remaining differences between the two workloads of section A."""


def _fmt(stat: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    """``median (min-max)`` of a stats dict, times ``scale``."""
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(stat['median'] * scale)} "
        f"({f.format(stat['min'] * scale)}-{f.format(stat['max'] * scale)})"
    )


def _period_table(
    section: dict[str, Any],
    names: list[str],
    first: str,
    unit: str,
    scale: float,
    digits: tuple[int, int],
) -> list[str]:
    """A section's table: each side's step period (in ``unit``: ``scale`` x seconds), CPU
    seconds, tokens per step and tokens/s as medians with min-max; ``names`` may carry
    backticks; ``digits``: of the period and of the CPU seconds."""
    head = f"| {first} |" if first else "| |"
    lines = [
        f"{head} step period, {unit} (min-max) | CPU s/step | generated tokens/step | tokens/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        v = section[name.strip("`")]
        lines.append(
            f"| {name} | {_fmt(v['period_s'], scale, digits[0])} | "
            f"{_fmt(v['cpu_period_s'], 1, digits[1])} | "
            f"{_fmt(v['tokens_per_step'])} | {_fmt(v['tokens_per_s'])} |"
        )
    return lines


def render(results: dict[str, Any]) -> str:
    """``trl_compare.md``: both sections' tables, the differences, the machine and the noise."""
    m = results["machine"]
    lines = [
        "# jackpot vs TRL GRPOTrainer, and decoupled vs on-policy",
        "",
        f"`python -m benchmarks.trl_compare` on {m['date']}: {m['cores']} cores, torch "
        f"{m['torch']}, trl {m['trl']}, transformers {m['transformers']}, Python {m['python']}; "
        f"load average {m['loadavg_start'][0]} at the start, {results['loadavg_end'][0]} at "
        f"the end; {results['elapsed_s']:.0f} s in all. The machine is shared: each period is "
        "a difference of two whole-process wall times, and the ratios are paired per round "
        "(both sides measured back to back); the min-max range over rounds shows the noise. "
        "CPU s/step (user + system time of the processes) moves less with other people's load.",
        "",
    ]
    a = results.get("trl")
    if a is not None:
        w = a["workload"]
        lines += [
            f"## A. TRL GRPOTrainer vs jackpot on-policy ({a['n1']}-step minus {a['n0']}-step "
            f"runs, {len(a['rounds'])} rounds)",
            "",
            f"Seed-{w['model_seed']} Qwen2 hidden {w['hidden_size']} x {w['num_layers']} and a "
            f"character tokenizer saved together, {w['num_prompts']} `AB+CD=` prompts (JSONL), "
            f"{w['prompts_per_step']} prompts x {w['group_size']} samples, {w['max_new_tokens']} "
            f"new tokens, one optimiser step per RL step (jackpot `algo.minibatches=1 "
            f"algo.ppo_epochs=1`, TRL `num_iterations=1`), lr {w['lr']}, {w['threads']} threads, "
            "exact-match reward. TRL with `gradient_checkpointing=False` (as jackpot). "
            f"TRL's recorded settings: {a['trl_args']}.",
            "",
            *_period_table(a, ["jackpot", "trl"], "", "ms", 1000, (0, 3)),
        ]
        lines += [
            "",
            f"- Paired ratio TRL period / jackpot period: **{_fmt(a['period_ratio'], 1, 2)}** "
            f"(jackpot throughput in steps/s relative to TRL's); tokens/s ratio "
            f"{_fmt(a['tokens_per_s_ratio'], 1, 2)}; CPU-time ratio "
            f"{_fmt(a['cpu_period_ratio'], 1, 2)}. Goal: >= 1.5x.",
            f"- In-run periods (median over the {a['n1']}-step run's steps after the first "
            f"{SKIP_STEPS}, from each framework's own per-step log: jackpot `perf/period_s`, "
            "TRL the time between consecutive log calls; no process start in them): jackpot "
            f"{_fmt(a['jackpot']['inrun_period_s'], 1000)} ms, TRL "
            f"{_fmt(a['trl']['inrun_period_s'], 1000)} ms, paired ratio "
            f"{_fmt(a['inrun_period_ratio'], 1, 2)}.",
            "",
            "Remaining differences between the two workloads:",
            "",
            *[f"- {d}" for d in DIFFERENCES],
            "",
        ]
    b = results.get("decoupled")
    if b is not None:
        s = b["sizes"]
        lines += [
            f"## B. Decoupled (training rollout model, top-k OBRS) vs on-policy "
            f"({b['n1']}-step minus {b['n0']}-step runs, {len(b['rounds'])} rounds)",
            "",
            f"`jackpot.fit` at the sizes of `benchmarks/e2e.py`: policy {s['policy'][0]} x "
            f"{s['policy'][1]}, rollout model {s['rollout'][0]} x {s['rollout'][1]}, "
            f"{s['prompts_per_step']} prompts x 4, {s['max_new_tokens']} new tokens, random-init "
            f"models, {b['threads']} threads. Decoupled: `"
            + " ".join(b["modes"]["decoupled_topk"])
            + "`; on-policy: `"
            + " ".join(b["modes"]["on_policy"])
            + "`.",
            "",
            *_period_table(b, ["`on_policy`", "`decoupled_topk`"], "mode", "s", 1, (2, 2)),
        ]
        lines += [
            "",
            f"- Paired ratio on-policy period / decoupled period: "
            f"**{_fmt(b['period_ratio'], 1, 2)}** (> 1: decoupled is faster); CPU-time ratio "
            f"{_fmt(b['cpu_period_ratio'], 1, 2)}; in-run `perf/period_s` ratio "
            f"{_fmt(b['inrun_period_ratio'], 1, 2)}.",
            "",
        ]
    return "\n".join(lines)


def machine(trl_python: str) -> dict[str, Any]:
    """Cores, versions (torch, transformers, trl in their interpreters), date, load."""
    import torch
    import transformers

    probe = "import trl; print(trl.__version__)"
    trl_version = subprocess.run(
        [trl_python, "-c", probe], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version or "not installed",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


QUICK = {"a": (1, 3, 1), "b": (1, 2, 1)}
"""``(n0, n1, rounds)`` of a ``--quick`` run: checks the plumbing, not the speed."""

FULL = {"a": (4, 64, 7), "b": (1, 4, 2)}
"""``(n0, n1, rounds)`` of the real run. Section A with 64 steps rather than 34
in the long run: a process start varies by a second or more on a shared machine, and the
60-step difference halves what that noise does to a period."""


def run(
    out: Path,
    trl_python: str,
    work: Path,
    quick: bool,
    sections: list[str],
    plan: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Run the chosen sections; write ``trl_compare.json`` and ``trl_compare.md`` to ``out``."""
    from benchmarks.run import FULL as BENCH_FULL
    from benchmarks.run import QUICK as BENCH_QUICK

    plan = {**(QUICK if quick else FULL), **(plan or {})}
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(trl_python), "quick": quick}
    if "trl" in sections:
        results["trl"] = section_a(work, trl_python, *plan["a"])
    if "decoupled" in sections:
        e2e = (BENCH_QUICK if quick else BENCH_FULL)["e2e"]
        sizes = {k: e2e[k] for k in ("policy", "rollout", "max_new_tokens", "prompts_per_step")}
        results["decoupled"] = section_b(work, *plan["b"], sizes)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "trl_compare.json").write_text(json.dumps(results, indent=1, default=_json) + "\n")
    (out / "trl_compare.md").write_text(render(results))
    return results


def _json(value: Any) -> Any:
    """JSON for tuples-in-config and NaN-free floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return list(value) if isinstance(value, tuple) else str(value)


def _plan(text: str) -> tuple[int, int, int]:
    """``N0,N1,ROUNDS`` -> a checked tuple (N1 > N0 >= 1, ROUNDS >= 1)."""
    n0, n1, rounds = (int(v) for v in text.split(","))
    if not (1 <= n0 < n1 and rounds >= 1):
        raise argparse.ArgumentTypeError(f"need N1 > N0 >= 1 and ROUNDS >= 1, got {text!r}")
    return n0, n1, rounds


def main(argv: list[str] | None = None) -> int:
    """``run`` (default) or the ``trl`` worker."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.trl_compare", description=__doc__)
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run the comparison (the default)")
    w = sub.add_parser("trl", help="worker: TRL GRPOTrainer for --steps steps")
    for q in (p, r):
        q.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
        q.add_argument("--work", type=Path, default=ROOT / "runs" / "trl_compare")
        q.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", sys.executable))
        q.add_argument("--quick", action="store_true", help="tiny run counts: plumbing only")
        q.add_argument("--sections", default="trl,decoupled", help="comma-separated: trl,decoupled")
        q.add_argument("--threads", type=int, default=WORKLOAD["threads"], help="torch threads")
        for key in ("a", "b"):
            q.add_argument(f"--{key}", type=_plan, help=f"section {key.upper()}'s N0,N1,ROUNDS")
    w.add_argument("--model", required=True)
    w.add_argument("--data", required=True)
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--threads", type=int, required=True)
    args = p.parse_args(argv)
    if args.command == "trl":
        trl_worker(args.model, args.data, args.steps, args.out, args.threads)
        return 0
    plan = {key: getattr(args, key) for key in ("a", "b") if getattr(args, key)}
    WORKLOAD["threads"] = args.threads
    sections = args.sections.split(",")
    results = run(args.out, args.trl_python, args.work, args.quick, sections, plan)
    for key, base, other in (
        ("trl", "jackpot", "trl"),
        ("decoupled", "decoupled_topk", "on_policy"),
    ):
        if key in results:
            ratio = results[key]["period_ratio"]["median"]
            print(f"[trl_compare] {other} period / {base} period: {ratio:.2f}x (median of rounds)")
    print(f"[trl_compare] wrote trl_compare.json and trl_compare.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
