"""``python -m benchmarks.gpu.check --out DIR [--dry-run]``: the whole GPU check, one command.

Six parts, each in fresh subprocesses under its own time limit; each part's result goes to
``DIR/partN_<name>.json`` and ``DIR/summary.md`` the moment it exists, so a run cut short
still reports what finished:

1. environment: GPU, memory, CUDA, torch, transformers, lightning, vllm versions;
2. correctness on the device: the transformers engine's recorded log-probs and top-k
   against a fresh forward pass (float32 and bfloat16), and the OBRS sampler's acceptance,
   lambda, Z and weights on the device against CPU for the same float64 inputs;
3. a short ``python -m jackpot.fit`` run in ``bf16-mixed``: decoupled, top-k OBRS, rollout
   model trained; finite losses, acceptance at the budget, peak GPU memory;
4. the decoupled speed-up: on-policy vs decoupled RL step with a random-init 0.44B Qwen2
   policy (Qwen2.5-0.5B's width and depth) and a 4.3x smaller rollout model, vocabulary
   151,936, 512 new tokens; step time, rollout share, ratio (as ``docs/results/bench.md``);
5. the same with ``rollout.engine=vllm`` and its weight-sync time, when vLLM is installed
   and the config has that key (skipped with the reason otherwise);
6. part 3's run under ``trainer.strategy=fsdp`` (FSDP2, both models sharded layer by layer
   on a one-GPU mesh), then resumed from its full-state checkpoint for one more step.

``--dry-run`` runs every part at tiny sizes on CPU (the CI test does): it prints each part's
time, and the summary holds the GPU estimate. Models, tokenizer and task are built locally
under ``--work`` (nothing is downloaded); ``benchmarks/gpu/check.sh`` installs and runs it
on a GPU machine. Exit code 0 when no part failed (skipped parts are fine), else 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmarks import e2e
from benchmarks.common import run_worker
from benchmarks.report import _num, _share, _table, _times

POLICY_05B = (896, 24, 14)
"""(hidden, layers, heads) of the policy: Qwen2.5-0.5B's width, depth and 64-dim heads; with
full multi-head attention and a 4 x hidden MLP (``benchmarks.assets`` builds no GQA) that is
0.44 B parameters with the tied 151,936-token embedding, against Qwen2.5-0.5B's 0.49 B."""

ROLLOUT_01B = (512, 6, 8)
"""(hidden, layers, heads) of the rollout model: 0.10 B parameters (78 M of them the
embedding), 4.3x fewer than the policy; a quarter of its depth is what makes decoding a
small batch faster (each token costs a forward through every layer)."""

GPU: dict[str, Any] = {
    "device": "cuda",
    "accelerator": "gpu",
    "precision": "bf16-mixed",
    "correctness": {
        "model": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2},
        "vocab": 151936,
        "tokens": 64,
        "obrs_rows": 1024,
        "obrs_vocab": 151936,
    },
    "assets": {
        "vocab_size": 151936,
        "policy": POLICY_05B,
        "rollout": ROLLOUT_01B,
        "max_positions": 1024,
        "num_examples": 256,
    },
    "max_new_tokens": 512,
    "prompts_per_step": 16,
    "micro_batch_size": 16,
    "fit_steps": 3,
    "speed_steps": 4,
    "vllm": ["rollout.vllm.dtype=bfloat16"],
}
"""Sizes of the real check on one GPU (vLLM in the trainer's precision, 30 % of the GPU)."""

DRY: dict[str, Any] = {
    "device": "cpu",
    "accelerator": "cpu",
    "precision": "bf16-mixed",
    "correctness": {
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
        "vocab": 512,
        "tokens": 8,
        "obrs_rows": 64,
        "obrs_vocab": 512,
    },
    "assets": {
        "vocab_size": 512,
        "policy": (64, 2, 2),  # head size 32: the smallest vLLM's CPU attention takes
        "rollout": (32, 1, 1),
        "max_positions": 64,
        "num_examples": 64,
    },
    "max_new_tokens": 8,
    "prompts_per_step": 2,
    "micro_batch_size": 4,
    "fit_steps": 2,
    "speed_steps": 2,
    "vllm": [
        "rollout.vllm.dtype=float32",
        "rollout.vllm.gpu_memory_utilization=0.05",
        "rollout.vllm.enforce_eager=true",
    ],
}
"""Tiny sizes of ``--dry-run`` (CPU): every code path of the real check, in seconds."""

BUDGET = 0.95
"""OBRS acceptance budget of every decoupled run."""

DECOUPLED_OBRS = ("sampler.name=obrs", "sampler.topk=20", f"sampler.budget={BUDGET}")
"""The sampler of every decoupled run: top-k OBRS (k = 20) at the paper's budget."""

MODES: dict[str, tuple[str, ...]] = {
    "on_policy": ("algo.mode=on_policy", "sampler.name=none"),
    "decoupled": ("algo.mode=decoupled", "algo.train_rollout=true", *DECOUPLED_OBRS),
}
"""Overrides of the two modes of parts 4 and 5: the policy rolls out and nothing is corrected,
or the rollout model rolls out, OBRS corrects and both models train."""

SPEEDUP_GOAL = 2.0
"""The project's performance goal: on-policy step time / decoupled step time on a GPU."""

INSTALL_ESTIMATE_S = 45.0
"""Installing jackpot and its missing wheels on a GPU machine (``benchmarks/gpu/check.sh``)."""

GPU_BUDGET_S = 420.0
"""Default wall-clock budget of all parts on a GPU: 8 minutes less the installs and margin."""

STATUSES = ("pass", "fail", "error", "timeout", "skipped")
"""Outcomes of a part: every check held / a check failed / it crashed / it ran out of time
(partial results kept) / it did not run (the reason is recorded)."""


@dataclass
class Context:
    """What every part needs: sizes, folders, the overall deadline and earlier results."""

    out: Path
    work: Path
    dry: bool
    sizes: dict[str, Any]
    deadline: float
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    def run_overrides(self) -> list[str]:
        """Overrides shared by every training run of parts 3-5 (device, precision, sizes)."""
        s = self.sizes
        return [
            f"trainer.accelerator={s['accelerator']}",
            "trainer.devices=1",
            f"trainer.precision={s['precision']}",
            f"trainer.micro_batch_size={s['micro_batch_size']}",
            f"rollout.max_new_tokens={s['max_new_tokens']}",
            f"rollout.prompts_per_step={s['prompts_per_step']}",
            f"rollout.group_size={e2e.GROUP_SIZE}",
            "rollout.logprobs_k=20",
        ]

    def worker(self, func: str, kwargs: dict[str, Any], limit: float) -> Any:
        """``benchmarks.gpu.parts.<func>(**kwargs)`` in a fresh interpreter, within ``limit``."""
        timeout = max(min(limit, self.deadline - time.monotonic()), 1.0)
        env = DRY_ENV if self.dry else None
        return run_worker("gpu.parts", func, kwargs, env=env, timeout=timeout)


@dataclass(frozen=True)
class Part:
    """One part of the check: its time limit and GPU estimate, and what it runs."""

    number: int
    key: str
    title: str
    limit_s: float
    """Time limit on a GPU (the dry run allows :data:`DRY_LIMIT_S` per part)."""
    estimate_s: float
    """Expected wall time on one H200-class GPU, started on a fresh machine."""
    run: Callable[[Context, float, Callable[[dict[str, Any]], None]], dict[str, Any]]
    """``(context, limit, save_partial) -> result``; raises on a crash or timeout."""


DRY_ENV = {"BENCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""One torch thread per dry-run worker: tiny tensors gain nothing from more, and on a busy
2-core machine OpenMP threads waiting on each other made the steps 5x slower."""

DRY_LIMIT_S = 240.0
"""Per-part time limit of the dry run (a loaded 2-core CPU imports torch slowly)."""


# ----------------------------------------------------------------------------- parts


def _environment(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    return ctx.worker("environment", {"device": ctx.sizes["device"]}, limit)


def _correctness(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    return ctx.worker(
        "correctness", {"device": ctx.sizes["device"], **ctx.sizes["correctness"]}, limit
    )


def _fit_kwargs(ctx: Context) -> dict[str, Any]:
    """The short fit runs' worker arguments: decoupled, both models checkpointing their
    activations."""
    overrides = [
        *ctx.run_overrides(),
        *MODES["decoupled"],
        "policy.gradient_checkpointing=true",
        "rollout_model.gradient_checkpointing=true",
        *e2e.COMMON,
    ]
    return {
        "work": str(ctx.work),
        "assets": ctx.sizes["assets"],
        "overrides": overrides,
        "steps": ctx.sizes["fit_steps"],
        "device": ctx.sizes["device"],
    }


def _fit(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    kwargs = {
        **_fit_kwargs(ctx),
        "budget": BUDGET,
        "rows_per_step": ctx.sizes["prompts_per_step"] * e2e.GROUP_SIZE,
    }
    return ctx.worker("fit_check", kwargs, limit)


def _speed(
    ctx: Context, limit: float, save: Callable[[dict[str, Any]], None], engine: list[str]
) -> dict[str, Any]:
    """On-policy then decoupled, each mode in its own process; summary as ``bench.md``'s."""
    start = time.monotonic()
    overrides = [*ctx.run_overrides(), *engine]
    runs: dict[str, list[dict[str, Any]]] = {}
    out: dict[str, Any] = {
        "overrides": overrides,
        "steps": ctx.sizes["speed_steps"],
        "dry": ctx.dry,
    }
    for mode, mode_overrides in MODES.items():
        kwargs = {
            "work": str(ctx.work),
            "assets": ctx.sizes["assets"],
            "overrides": [*overrides, *mode_overrides],
            "steps": ctx.sizes["speed_steps"],
            "device": ctx.sizes["device"],
        }
        res = ctx.worker("speed_mode", kwargs, limit - (time.monotonic() - start))
        runs[mode] = [res]
        out["modes"] = {m: e2e.summarize_mode(r) for m, r in runs.items()}
        out["runs"] = runs
        save(out)
    out.update(e2e.summarize(runs))
    out["checks"] = [
        {
            "name": f"{mode}: every step time finite",
            "ok": all(math.isfinite(s) for s in runs[mode][0]["per_step"]["perf/step_s"]),
            "value": runs[mode][0]["per_step"]["perf/step_s"],
            "limit": None,
        }
        for mode in runs
    ]
    return out


def _hf_speed(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    return _speed(ctx, limit, save, [])


def vllm_skip_reason() -> str | None:
    """Why part 5 cannot run here (vLLM not importable, or no ``rollout.engine`` key), or None."""
    import importlib.util

    from jackpot.config import RolloutConfig

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not importable in this Python (pip install vllm)"
    if "engine" not in {f.name for f in fields(RolloutConfig)}:
        return "this jackpot has no rollout.engine config key (no vLLM engine yet)"
    return None


def _vllm_speed(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    return _speed(ctx, limit, save, ["rollout.engine=vllm", *ctx.sizes["vllm"]])


def _fsdp(ctx: Context, limit: float, save: Callable[[dict[str, Any]], None]) -> Any:
    return ctx.worker("fsdp_check", _fit_kwargs(ctx), limit)


PARTS: tuple[Part, ...] = (
    Part(1, "env", "Environment", 90, 15, _environment),
    Part(2, "correctness", "Correctness on the device", 150, 45, _correctness),
    Part(3, "fit", "Short bf16-mixed fit (decoupled, top-k OBRS)", 180, 60, _fit),
    Part(4, "speedup", "Decoupled speed-up, transformers engine", 300, 110, _hf_speed),
    Part(5, "vllm", "Decoupled speed-up, vLLM engine", 240, 150, _vllm_speed),
    Part(6, "fsdp", "FSDP2 on one GPU: fit, then resume", 180, 60, _fsdp),
)
"""The parts in run order. GPU estimates, reasoned from the sizes (not measured): ~10 s to import
torch, transformers and Lightning per process; part 2 is mostly float64 work on CPU; part 3
builds the models (~15 s), then 3 steps and a 6.5 GB final checkpoint; part 4 decodes 512
tokens at ~10 ms per token through the policy's 24 layers (~5 s per on-policy rollout, about
a quarter of that through the rollout model's 6) plus ~2 s of training per step, 4 steps;
part 5 adds two vLLM engine start-ups with CUDA-graph capture; part 6 is part 3's run under
``trainer.strategy=fsdp`` (both models built and sharded, two final checkpoints) plus a
resumed step."""


# ----------------------------------------------------------------------------- running


def _tail(exc: BaseException) -> str:
    """The last lines of a worker's output carried by its exception."""
    if isinstance(exc, subprocess.TimeoutExpired):  # its output can be bytes in text mode
        streams = (exc.stdout, exc.stderr)
        text = "".join(
            t.decode(errors="replace") if isinstance(t, bytes) else t or "" for t in streams
        )
        return text[-3000:]
    return str(exc)[-3000:]


def run_part(ctx: Context, part: Part) -> dict[str, Any]:
    """Run one part under its limit; its record (status, time, result, checks) is saved."""
    limit = DRY_LIMIT_S if ctx.dry else part.limit_s
    record: dict[str, Any] = {
        "part": part.number,
        "key": part.key,
        "title": part.title,
        "limit_s": limit,
        "estimate_gpu_s": part.estimate_s,
        "status": "running",
    }
    reason = _skip_reason(ctx, part)
    start, cpu_start = time.monotonic(), _children_cpu_s()

    def save(result: dict[str, Any]) -> None:
        record["result"] = result
        record["elapsed_s"] = time.monotonic() - start
        write(ctx, record)

    if reason is not None:
        record.update(status="skipped", reason=reason)
    else:
        try:
            save(part.run(ctx, limit, save))
            checks = record["result"].get("checks", [])
            record["status"] = "pass" if all(c["ok"] for c in checks) else "fail"
        except subprocess.TimeoutExpired as exc:
            record.update(status="timeout", reason=f"over {exc.timeout:.0f} s", log_tail=_tail(exc))
        except Exception as exc:  # a part's crash is its result; the next part still runs
            record.update(status="error", reason=type(exc).__name__, log_tail=_tail(exc))
    record["elapsed_s"] = time.monotonic() - start
    record["cpu_s"] = _children_cpu_s() - cpu_start
    write(ctx, record)
    return record


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished subprocesses so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _skip_reason(ctx: Context, part: Part) -> str | None:
    """Why ``part`` does not run: no device, no time left, or (part 5) no vLLM."""
    env = ctx.records.get(1)
    if part.number > 1 and env is not None and env["status"] != "pass":
        return "part 1 found no working device"
    if ctx.deadline - time.monotonic() < 5:
        return "the run's time budget (--budget-s) is spent"
    if part.number == 5:
        return vllm_skip_reason()
    return None


def write(ctx: Context, record: dict[str, Any]) -> None:
    """Save one part's JSON and rewrite the summary (called whenever a result changes)."""
    ctx.records[record["part"]] = record
    path = ctx.out / f"part{record['part']}_{record['key']}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    (ctx.out / "summary.md").write_text(render(ctx))


# ----------------------------------------------------------------------------- report


def _fmt(value: Any) -> str:
    """A check's value for a table cell: numbers to 3 significant digits, lists shortened."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return (
            "[" + ", ".join(_fmt(v) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
        )
    return "n/a" if value is None else str(value)


def _env_md(res: dict[str, Any]) -> list[str]:
    keys = (
        "gpu",
        "gpu_mem_gib",
        "driver",
        "cuda",
        "torch",
        "transformers",
        "lightning",
        "vllm",
        "jackpot",
    )
    return [f"- {k}: {_fmt(res.get(k))}" for k in keys if k in res]


def _correctness_md(res: dict[str, Any]) -> list[str]:
    lines = [
        "Engine fidelity: every recorded `log p_inf` and top-k log-prob against a fresh, "
        "unpadded forward pass of the same model, in nats (tolerances max / mean: float32 "
        "1e-4 / 1e-5, bfloat16 0.1 / 0.01):",
        "",
        *_table(
            ["dtype", "max abs diff", "mean abs diff", "max abs diff (top-k)", "max / mean tol."],
            [
                [
                    d,
                    _fmt(f["max_abs_logp_diff"]),
                    _fmt(f["mean_abs_logp_diff"]),
                    _fmt(f["max_abs_topk_diff"]),
                    f"{_fmt(f['atol'])} / {_fmt(f['mean_tol'])}",
                ]
                for d, f in res["fidelity"].items()
            ],
        ),
    ]
    packed = res.get("packing")
    if packed:
        lines += [
            "",
            "Packed (padding-free) forward against the padded one, response log-probs, max abs "
            "diff in nats per attention kernel (same tolerances):",
            "",
            *_table(
                ["dtype", *next(iter(packed.values()))["max_abs_logp_diff"]],
                [
                    [d, *(_fmt(v) for v in p["max_abs_logp_diff"].values())]
                    for d, p in packed.items()
                ],
            ),
        ]
    o = res.get("obrs")
    if o:
        lines += [
            "",
            f"OBRS (budget {o['budget']}) on {o['rows']} tokens x V = {o['vocab']}, float64, "
            "device against CPU (tolerance 1e-9):",
            "",
            *_table(
                [
                    "Z from",
                    "accept prob diff",
                    "weights rel diff",
                    "lambda/Z/kappa rel diff",
                    "accept rate CPU / device",
                ],
                [
                    [
                        v,
                        _fmt(f["accept_prob_max_abs_diff"]),
                        _fmt(f["weights_max_rel_diff"]),
                        _fmt(f["scalars_max_rel_diff"]),
                        f"{f['accept_rate_cpu']:.4f} / {f['accept_rate_device']:.4f}",
                    ]
                    for v, f in o["variants"].items()
                ],
            ),
        ]
    return lines


def _fit_md(res: dict[str, Any]) -> list[str]:
    peak = res.get("logged_peak_mem_gb") or res.get("peak_mem_gib")
    params = res.get("params", {})
    return [
        f"`{res['command']}`",
        "",
        f"- policy {params.get('policy', 0) / 1e6:.0f} M parameters, rollout model "
        f"{params.get('rollout', 0) / 1e6:.0f} M; {res['steps']} RL steps in "
        f"{res['wall_s']:.0f} s",
        f"- acceptance rate per step {_fmt(res['accept_rate'])} (budget {BUDGET}); mean "
        f"acceptance probability {_fmt(res['accept_prob_mean'])}",
        f"- step time {_fmt(res['step_s'])} s; response length {_fmt(res['response_length'])}",
        f"- peak GPU memory: {_fmt(peak)} GiB"
        + ("" if peak is not None else " (CPU run: not measured)"),
    ]


def _fsdp_md(res: dict[str, Any]) -> list[str]:
    peak = res.get("peak_mem_gib")
    return [
        f"`{res['command']}` (then `--resume` for one more step)",
        "",
        f"- {res['steps']} RL steps in {res['wall_s']:.0f} s, exit codes {res['rc']}",
        f"- losses {', '.join(f'{k} {_fmt(v)}' for k, v in res['losses'].items())}",
        f"- policy gradient norm {_fmt(res['grad_norm_policy'])}; step time "
        f"{_fmt(res['step_s'])} s",
        f"- peak GPU memory: {_fmt(peak)} GiB"
        + ("" if peak is not None else " (CPU run: not measured)"),
    ]


def _speed_md(res: dict[str, Any]) -> list[str]:
    modes = res.get("modes", {})
    rows = [
        [
            f"`{name}`",
            f"{_num(m['step_s'])} ({_num(m['step_s_range'][0])}-{_num(m['step_s_range'][1])})",
            _num(m["rollout_s"]),
            _num(m["train_s"]),
            _share(m["rollout_share"]),
            _num(m["rollout_tokens_per_s"], 4),
            _num(m["response_length"]),
            _share(m["truncated_frac"]),
            _fmt(res["runs"][name][0].get("peak_mem_gib")),
            _fmt(res["runs"][name][0].get("weight_sync_s")),
            _times(m.get("step_ratio")),
        ]
        for name, m in modes.items()
    ]
    header = ["mode", "step (s) (min-max)", "rollout (s)", "train (s)", "rollout share"]
    header += ["rollout tok/s", "mean response len", "hit the limit", "peak GiB", "weight sync (s)"]
    header += ["on-policy / mode"]
    lines = [
        f"{res['steps']} RL steps per mode, the first {e2e.WARMUP_STEPS} dropped; medians of "
        "`perf/step_s`, `perf/rollout_share`, ...; on-policy: the policy rolls out, sampler "
        f"`none`; decoupled: the rollout model rolls out, top-k OBRS (k = 20, budget {BUDGET}), "
        "both models train. Random-init models rarely emit EOS, so responses run to the limit.",
        "",
        *_table(header, rows),
    ]
    if "speedup" in res:
        lines += [
            "",
            f"- **On-policy step / decoupled step = {_times(res['speedup'])}**; the rollout "
            f"alone is {_times(res['rollout_speedup'])} faster with the rollout model; Amdahl "
            "with the measured on-policy rollout share allows "
            f"{_times(res['amdahl_measured_share'])}.",
            f"- Goal (decoupled step at least {SPEEDUP_GOAL:g}x faster than on-policy): "
            + ("met" if res["speedup"] >= SPEEDUP_GOAL else "missed")
            + (" (dry run: tiny CPU models, not the goal's setting)." if res["dry"] else "."),
        ]
    return lines


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "env": _env_md,
    "correctness": _correctness_md,
    "fit": _fit_md,
    "speedup": _speed_md,
    "vllm": _speed_md,
    "fsdp": _fsdp_md,
}
"""Part key -> Markdown lines of its result."""


def render(ctx: Context) -> str:
    """``summary.md``: one table of every part, then each part's figures and failed checks."""
    mode = "dry run (tiny sizes, CPU)" if ctx.dry else "GPU run"
    rows = []
    for part in PARTS:
        rec = ctx.records.get(part.number, {})
        elapsed = rec.get("elapsed_s")
        rows.append(
            [
                str(part.number),
                part.title,
                rec.get("status", "not run"),
                "" if elapsed is None else f"{elapsed:.1f}",
                f"{rec['cpu_s']:.1f}" if "cpu_s" in rec else "",
                f"{rec.get('limit_s', DRY_LIMIT_S if ctx.dry else part.limit_s):.0f}",
                f"{part.estimate_s:.0f}",
                rec.get("reason", ""),
            ]
        )
    total = INSTALL_ESTIMATE_S + sum(p.estimate_s for p in PARTS)
    header = ["part", "what", "status", "time (s)", "CPU (s)", "limit (s)", "GPU estimate (s)"]
    lines = [
        f"# jackpot GPU check: {mode}",
        "",
        f"`python -m benchmarks.gpu.check{' --dry-run' if ctx.dry else ''}`, "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}. "
        f"GPU estimate from a fresh H200-class machine: {total:.0f} s including "
        f"{INSTALL_ESTIMATE_S:.0f} s of installs.",
        "",
        *_table(
            [*header, "note"],
            rows,
        ),
        "",
        "`CPU (s)`: user + system seconds of the part's processes (on a shared machine the wall "
        "time overstates the work).",
    ]
    for part in PARTS:
        if part.number not in ctx.records:
            continue
        rec = ctx.records[part.number]
        lines += ["", f"## {part.number}. {part.title}: {rec['status']}", ""]
        res = rec.get("result")
        if res:
            try:
                lines += SECTIONS[part.key](res)
            except (KeyError, TypeError, ValueError) as exc:  # partial result: the JSON has it
                lines.append(f"- figures not rendered ({exc!r}); see the part's JSON")
            failed = [c for c in res.get("checks", []) if not c["ok"]]
            lines += [
                f"- FAILED: {c['name']}: {_fmt(c['value'])} (limit {_fmt(c['limit'])})"
                for c in failed
            ]
        if rec.get("reason"):
            lines.append(f"- {rec['status']}: {rec['reason']}")
        if rec.get("log_tail"):
            lines += ["", "```", rec["log_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the parts in order, return 0 when none failed."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu.check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, required=True, help="folder for partN_*.json and summary.md")
    p.add_argument("--dry-run", action="store_true", help="every part at tiny sizes on CPU")
    p.add_argument("--work", type=Path, help="models, task and runs (default: a temporary folder)")
    p.add_argument(
        "--budget-s", type=float, help="wall-clock budget of all parts (GPU default 420)"
    )
    p.add_argument("--parts", default="1,2,3,4,5,6", help="comma-separated part numbers to run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (math.inf if args.dry_run else GPU_BUDGET_S)
    chosen = {int(n) for n in args.parts.split(",")}
    with tempfile.TemporaryDirectory(prefix="jackpot-gpu-check-") as tmp:
        ctx = Context(
            out=args.out,
            work=args.work or Path(tmp),
            dry=args.dry_run,
            sizes=DRY if args.dry_run else GPU,
            deadline=time.monotonic() + budget,
        )
        for part in PARTS:
            if part.number not in chosen:
                continue
            rec = run_part(ctx, part)
            print(
                f"[gpu_check] part {part.number} {part.key}: {rec['status']} in "
                f"{rec['elapsed_s']:.1f} s, {rec['cpu_s']:.1f} s CPU (GPU estimate "
                f"{part.estimate_s:.0f} s)" + (f": {rec['reason']}" if rec.get("reason") else ""),
                flush=True,
            )
    print(f"[gpu_check] wrote {args.out / 'summary.md'}")
    return (
        1 if any(r["status"] in ("fail", "error", "timeout") for r in ctx.records.values()) else 0
    )


if __name__ == "__main__":
    sys.exit(main())
