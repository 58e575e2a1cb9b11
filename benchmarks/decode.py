"""Section 4: the ``hf`` rollout engine's decode against the loop it replaced and ``generate``.

Three ways to sample ``prompts x group`` responses of ``tokens`` tokens (no stop token, so
every variant runs the full length) from one seeded Qwen2, interleaved repeat by repeat in
one process so background load hits them alike:

- ``forward, every row prefilled``: the model's forward per token and transformers' cache,
  each of the ``N`` rows prefilled on its own (what the engine did before it shared a
  prompt's prefill across its group);
- ``engine: prefill per prompt``: the engine, which prefills each prompt once per group;
- ``model.generate``: transformers' sampler on the ``N`` rows (full softmax, temperature 1).

Ratios are against the first variant. ``python -m benchmarks.decode [--out DIR] [--repeats R]``
runs this section alone into ``decode.json`` / ``decode.md``; ``benchmarks.run`` includes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, machine_info, median, run_worker

VARIANTS = (
    "forward, every row prefilled",
    "engine: prefill per prompt",
    "model.generate",
)
"""Measured variants, the first the baseline of the ratios."""


def measure(
    hidden: int, layers: int, prompts: int, group: int, tokens: int, repeats: int
) -> dict[str, Any]:
    """Median seconds per rollout of each variant, and its ratio to the baseline."""
    from transformers import GenerationConfig

    from jackpot.models import ModelSpec, build_model
    from jackpot.rollout import SamplingParams
    from jackpot.rollout.batch import left_pad
    from jackpot.rollout.hf import HFRolloutEngine

    model = build_model(
        ModelSpec(vocab_size=16, hidden_size=hidden, num_layers=layers, num_heads=4)
    ).eval()
    distinct = [[1 + (i + j) % 12 for j in range(6)] for i in range(prompts)]
    rows = [p for p in distinct for _ in range(group)]
    params = SamplingParams(max_new_tokens=tokens, logprobs_k=1)  # no stop token
    engine = HFRolloutEngine(model, pad_token_id=0)
    ids, mask = left_pad(rows, 0)
    config = GenerationConfig(
        do_sample=True, top_k=0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=0,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)

    def generate() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    calls: dict[str, Callable[[], object]] = {
        VARIANTS[0]: lambda: engine.generate(rows, 1, params, gen),
        VARIANTS[1]: lambda: engine.generate(distinct, group, params, gen),
        VARIANTS[2]: generate,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = median(times[VARIANTS[0]])
    return {
        "sizes": {"hidden": hidden, "layers": layers, "prompts": prompts, "group": group,
                  "tokens": tokens},
        "variants": {
            name: {"median_s": median(t), "ratio": base / median(t)} for name, t in times.items()
        },
    }  # fmt: skip


def run(points: list[dict[str, int]], repeats: int) -> dict[str, Any]:
    """Every size point in a fresh interpreter."""
    return {
        "points": [run_worker("decode", "measure", {**p, "repeats": repeats}) for p in points],
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    """This section alone, at the full sizes of ``benchmarks.run``."""
    from benchmarks.report import decode_md
    from benchmarks.run import FULL

    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--repeats", type=int, default=FULL["decode"]["repeats"])
    args = p.parse_args(argv)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    info = machine_info()
    result = run(FULL["decode"]["points"], args.repeats)
    result["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    result["elapsed_s"] = time.perf_counter() - start
    result["machine"] = info
    head = (
        f"`python -m benchmarks.decode` on {info['date']}: {info['cores']} cores, torch "
        f"{info['torch']} ({info['torch_threads']} threads), Python {info['python']}."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "decode.md").write_text("\n".join([head, "", *decode_md(result)]))
    print(f"[decode] wrote decode.json and decode.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
