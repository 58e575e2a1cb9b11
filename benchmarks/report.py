"""Targets and the markdown report of a benchmark run (pure: no torch, no timing, testable)."""

from __future__ import annotations

import math
from typing import Any

OVERHEAD_TARGET = 0.03
"""OBRS may add at most this share to a training step."""
SPEEDUP_TARGET = 2.0
"""A decoupled step must be at least this many times faster than an on-policy one."""
TOPK_MEM_FACTOR = 10.0
"""Top-k Z counts as O(B·T·k) memory when its extra peak is at most this many times the stored
candidate set (B·T x 2k ids int64 + two fp32 log-probs), whatever V is."""


def _num(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits (all integer digits from 100 up), or a dash if missing."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.0f}" if abs(x) >= 10 ** (digits - 1) else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    """A share as a signed percentage with one decimal."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:+.1f} %"


def _share(x: float | None) -> str:
    """A share in [0, 1] as a percentage without sign."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def _share2(x: float | None) -> str:
    """A small share as a percentage with two decimals."""
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def _times(x: float | None) -> str:
    """A ratio as ``1.23x``."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def _status(ok: bool | None) -> str:
    """Bold met / missed, or n/a when the figure is missing."""
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _load(sec: dict[str, Any]) -> str:
    """The section's duration and 1-minute load average at its start and end."""
    start, end = sec["loadavg"]
    return f"Section time {sec['elapsed_s']:.0f} s, load average {start} -> {end}."


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _variant(section: dict[str, Any], name: str) -> dict[str, Any]:
    """The normaliser variant called ``name``."""
    return next(v for v in section["variants"] if v["name"] == name)


def largest_point(overhead: dict[str, Any]) -> dict[str, Any] | None:
    """The overhead grid point with the most B·T·V that ran (not skipped)."""
    ran = [p for p in overhead["grid"] if "skipped" not in p]
    return max(ran, key=lambda p: p["rows"] * p["vocab"]) if ran else None


def _sampler(point: dict[str, Any], name: str) -> dict[str, Any]:
    """The sampler called ``name`` at one overhead grid point."""
    return next(s for s in point["samplers"] if s["name"] == name)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's three performance targets, each with the measured figure and met / missed."""
    e2e, norm, over = results["e2e"], results["normalizer"], results["overhead"]
    dec = e2e["modes"]["decoupled"]
    overhead = e2e["obrs_share"]
    text = (
        f"{_share2(overhead)} of a decoupled step spent in `run_sampler` (candidate set + "
        f"OBRS), V = {e2e['vocab']}, exact Z (section 3)"
    )
    point = largest_point(over)
    if point is not None:
        topk, exact = _sampler(point, "obrs_topk"), _sampler(point, "obrs_exact")
        text += (
            f"; at V = {point['vocab']}, B·T = {point['rows']} the sampler alone costs "
            f"{_share(topk['sampler_over_baseline'])} (top-k) / "
            f"{_share(exact['sampler_over_baseline'])} (exact) of a plain PPO loss pass, "
            "which has no model forward/backward (section 2)"
        )
    out = [
        {
            "target": f"OBRS overhead <= {OVERHEAD_TARGET:.0%} of a training step",
            "value": overhead,
            "measured": text,
            "met": None if not math.isfinite(overhead) else overhead <= OVERHEAD_TARGET,
        }
    ]
    z_only, full = _variant(norm, "topk_z_only"), _variant(norm, "full")
    extra, store = z_only["extra_peak_mib"], norm["topk_store_mib"]
    out.append(
        {
            "target": "top-k extra memory O(B·T·k)",
            "value": extra,
            "measured": (
                f"+{_num(extra)} MiB = {_num(extra / store)} x the stored candidate set "
                f"({_num(store)} MiB, B·T = {norm['rows']}, 2k = {2 * norm['k']}; "
                f"criterion <= {TOPK_MEM_FACTOR:g}x); exact full path +"
                f"{_num(full['extra_peak_mib'])} MiB (V = {norm['vocab']}, section 1)"
            ),
            "met": extra <= TOPK_MEM_FACTOR * store,
        }
    )
    speedup = e2e["speedup"]
    on = e2e["modes"]["on_policy"]
    out.append(
        {
            "target": f"decoupled step >= {SPEEDUP_TARGET:g}x faster than on-policy",
            "value": speedup,
            "measured": (
                f"{_times(speedup)} ({_num(on['step_s'])} s vs {_num(dec['step_s'])} s; "
                f"on-policy rollout share {_share(on['rollout_share'])}, section 3)"
            ),
            "met": None if not math.isfinite(speedup) else speedup >= SPEEDUP_TARGET,
        }
    )
    return out


def _normalizer_md(sec: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{v['name']}`",
            v["desc"],
            _num(v["time_s"]),
            _times(v["time_ratio"]),
            _num(v["extra_peak_mib"]),
            _times(v["mem_ratio"]),
        ]
        for v in sec["variants"]
    ]
    return [
        f"## 1. Normaliser Z (B·T = {sec['rows']}, V = {sec['vocab']}, k = {sec['k']})",
        "",
        f"One fp32 B·T x V copy is {_num(sec['logits_mib'])} MiB; the stored candidate set "
        f"(B·T x 2k ids + 2 log-probs) {_num(sec['topk_store_mib'])} MiB. Extra peak RSS: "
        f"minimum over {sec['runs']} fresh processes; time: median of "
        f"{sec['runs']} x {sec['repeats']} calls. Baseline: `full`. {_load(sec)}",
        "",
        *_table(
            ["variant", "what it runs", "time (s)", "x full", "extra peak (MiB)", "x full"],
            rows,
        ),
    ]


def _overhead_md(sec: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    skipped: list[str] = []
    for p in sec["grid"]:
        if "skipped" in p:
            skipped.append(f"- V = {p['vocab']}, B·T = {p['rows']}: skipped, {p['skipped']}")
            continue
        for s in p["samplers"]:
            rows.append(
                [
                    str(p["vocab"]),
                    str(p["rows"]),
                    _num(p["baseline_s"]),
                    f"`{s['name']}`",
                    _num(s["sampler_s"]),
                    _num(s["total_s"]),
                    _times(s["ratio"]),
                    _share(s["sampler_over_baseline"]),
                    _num(s["stats"].get("obrs/accept_rate")),
                ]
            )
    header = ["V", "B·T", "loss pass (s)", "sampler", "sampler (s)", "sampler + loss (s)"]
    header += ["x loss pass", "sampler / loss pass", "accept rate"]
    return [
        f"## 2. Sampler + loss against a plain PPO loss pass (T = {sec['seq_len']}, "
        f"k = {sec['topk']}, budget {sec['budget']})",
        "",
        "Baseline: `token_logprobs` with grad + `policy_loss` (weights None) + backward on "
        "the policy logits, the part of a step every sampler adds to; median of "
        f"{sec['repeats']} interleaved repeats. A real step also runs the model's "
        "forward/backward, so `sampler / loss pass` is an upper bound on a sampler's share. "
        + _load(sec),
        "",
        *_table(header, rows),
        *(["", *skipped] if skipped else []),
    ]


def _e2e_md(sec: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{name}`",
            sec["modes_desc"][name],
            f"{_num(m['step_s'])} ({_num(m['step_s_range'][0])}-{_num(m['step_s_range'][1])})",
            _num(m["rollout_s"]),
            _num(m["train_s"]),
            _share(m["rollout_share"]),
            _share2(m["sampler_share"]),
            _num(m["rollout_tokens_per_s"], 4),
            _num(m["response_length"]),
            _share(m["truncated_frac"]),
            _times(m["step_ratio"]),
        ]
        for name, m in sec["modes"].items()
    ]
    header = ["mode", "what", "step (s) (min-max)", "rollout (s)", "train (s)", "rollout share"]
    header += ["sampler share"]
    header += ["rollout tok/s", "mean response len", "hit the limit", "on-policy / mode"]
    p, r = sec["policy"], sec["rollout"]
    on = sec["modes"]["on_policy"]
    share = on["rollout_share"]
    free = 1.0 / (1.0 - share) if share < 1 else math.inf
    return [
        f"## 3. End-to-end RL step (policy {p[0]}x{p[1]}, rollout model {r[0]}x{r[1]}, "
        f"B = {sec['rows']}, max_new_tokens = {sec['max_new_tokens']}, V = {sec['vocab']})",
        "",
        f"`jackpot.fit.run` on `configs/default.yaml` + `{' '.join(sec['overrides'])}`; "
        f"{sec['steps']} RL steps per run, {sec['runs']} run(s) per mode in alternation, the "
        f"first {sec['warmup_steps']} step(s) of each run dropped; medians of the trainer's "
        "`perf/step_s`, `perf/rollout_share`, `perf/rollout_tokens_per_s`, `response/length` "
        "and `response/truncated_frac` (`hit the limit`); a wide step range means background "
        "load hit some steps. `sampler share`: time inside the "
        "trainer's `run_sampler` over step time. Random-init models: a response ends at a "
        "random EOS or at the limit, and the decode loop runs until the last row ends. "
        + _load(sec),
        "",
        *_table(header, rows),
        "",
        f"- On-policy step / decoupled step = {_times(sec['speedup'])}; the rollout alone is "
        f"{_times(sec['rollout_speedup'])} faster with the rollout model (same prompts, "
        "same batch).",
        f"- What limits it on this CPU: rollouts are only {_share(share)} of an on-policy "
        f"step, so even free rollouts would give at most {_times(free)}; with the measured "
        f"rollout speed-up Amdahl's law allows {_times(sec['amdahl_measured_share'])}, and "
        "the decoupled step also scores and trains the rollout model (RL + distillation). "
        "Training (forward + backward + AdamW of the policy) is compute-bound and dominates "
        "on a CPU; on GPUs decoding is memory-bound and rollouts take ~80 % of a step, where "
        f"the same rollout speed-up would give {_times(sec['amdahl_share_80'])} "
        "(a projection, not measured).",
    ]


def decode_md(sec: dict[str, Any]) -> list[str]:
    out = [
        "## 4. Rollout decode of the `hf` engine",
        "",
        "One seeded Qwen2 per table, `prompts x group` responses of `tokens` tokens, no stop "
        "token; the variants interleaved repeat by repeat in one process, "
        f"{sec['repeats']} repeats, medians (`benchmarks/decode.py`). Speed vs the old loop: "
        "the time of `forward, every row prefilled` (the engine before it shared prefills) "
        "over the variant's; > 1 is faster. " + _load(sec),
        "",
    ]
    for point in sec["points"]:
        z = point["sizes"]
        out += [
            f"Qwen2 {z['hidden']} x {z['layers']}, {z['prompts']} prompts x {z['group']}, "
            f"{z['tokens']} tokens:",
            "",
            *_table(
                ["variant", "ms per rollout", "speed vs the old loop"],
                [
                    [name, _num(1000 * v["median_s"], 4), _times(v["ratio"])]
                    for name, v in point["variants"].items()
                ],
            ),
            "",
        ]
    return out


def render(results: dict[str, Any]) -> str:
    """The whole ``bench.md``: machine, targets, then one section per benchmark."""
    m = results["machine"]
    cmd = "python -m benchmarks.run" + (" --quick" if results["quick"] else "")
    head = [
        "# jackpot benchmarks" + (" (quick smoke run: tiny sizes)" if results["quick"] else ""),
        "",
        f"`{cmd}` on {m['date']}: {m['cores']} cores, {m['mem_total_gib']} GiB, torch "
        f"{m['torch']} ({m['torch_threads']} threads), Python {m['python']}; load average "
        f"{m['loadavg_start'][0]} at the start, {results['loadavg_end'][0]} at the end; "
        f"{results['elapsed_s']:.0f} s in all. Every ratio is against a baseline measured in "
        "the same run; nothing asserts a time.",
        "",
        "## Targets",
        "",
        *_table(
            ["target", "measured", "status"],
            [[t["target"], t["measured"], _status(t["met"])] for t in results["targets"]],
        ),
        "",
    ]
    body = [
        *_normalizer_md(results["normalizer"]),
        "",
        *_overhead_md(results["overhead"]),
        "",
        *_e2e_md(results["e2e"]),
        "",
        *decode_md(results["decode"]),
    ]
    return "\n".join(head + body) + "\n"
