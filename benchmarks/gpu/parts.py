"""Workers of the GPU check (``python -m benchmarks.gpu.check``), one fresh interpreter each.

Every public function here is run through :func:`benchmarks.common.run_worker` (so a hung
CUDA call can be killed by the parent's timeout), takes JSON-ready keyword arguments and
returns a JSON-ready dict; a result with ``checks`` lists ``{"name", "ok", "value",
"limit"}`` entries the parent turns into pass/fail. The models are random-init Qwen2s saved
to local directories with a locally built tokenizer, and the task is a local JSONL file:
nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks import e2e
from benchmarks.assets import fit_overrides

FIDELITY_SETTINGS: tuple[tuple[float, int, float], ...] = ((1.0, 0, 1.0), (0.7, 50, 0.9))
"""(temperature, top_k, top_p) of the fidelity rollouts: plain sampling, then truncated."""

FIDELITY_ATOL: dict[str, tuple[float, float]] = {"float32": (1e-4, 1e-5), "bfloat16": (0.1, 0.01)}
"""(max, mean) |recorded - fresh| log-prob allowed, in nats. float32: the CPU test's 1e-5 with
room for the GPU's different kernels in cached decoding and in a full forward. bfloat16: each
rounding costs up to 2^-8 of a value, the two paths round differently in every layer, and a
log-prob inherits the error of its logit (tokens are drawn from float32 log-probs of the
bfloat16 logits either way); the dry run measures 0.02 max, 0.002 mean."""

FP64_RTOL = 1e-9
"""Relative tolerance between the OBRS sampler's float64 results on the device and on CPU."""

EXTRA_KEYS = ("perf/weight_sync_s", "perf/peak_mem_gb", "obrs/accept_rate")
"""Per-step metrics kept beyond ``benchmarks.e2e.KEYS`` (absent ones read as NaN)."""


def _check(name: str, ok: bool, value: Any, limit: Any) -> dict[str, Any]:
    """One pass/fail line of a part's report."""
    return {"name": name, "ok": bool(ok), "value": value, "limit": limit}


def _device(name: str) -> torch.device:
    """``cuda`` or ``cpu``; a clear error when CUDA is asked for and not visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def _peak_mem_gib(device: torch.device) -> float | None:
    """Peak memory torch allocated on ``device`` in this process, in GiB (None on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


# ----------------------------------------------------------------------------- part 1


def _version(package: str) -> str | None:
    """Installed version of ``package`` without importing it (None when absent)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    """GPU name and memory, CUDA, driver and library versions; a bf16 matmul as a smoke test."""
    dev = _device(device)
    out: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "bf16_supported": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,
    }
    for package in ("transformers", "lightning", "vllm", "jackpot"):
        out[package] = _version(package)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update(
            gpu=props.name, gpu_mem_gib=props.total_memory / 2**30, gpus=torch.cuda.device_count()
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            proc = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
            out["driver"] = proc.stdout.strip() or None
    a = torch.randn(256, 256, device=dev, dtype=torch.bfloat16)
    product = (a @ a).float()
    out["checks"] = [
        _check(
            "bf16 matmul on the device is finite", bool(torch.isfinite(product).all()), None, None
        )
    ]
    return out


# ----------------------------------------------------------------------------- part 2


def _fresh_logp(model: torch.nn.Module, batch: Any, row: int) -> Tensor:
    """Sampling log-probs ``(L, V)`` of one row from a fresh, unpadded forward pass."""
    from jackpot.rollout import sampling_logprobs

    prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
    length = int(batch.response_lengths[row])
    ids = torch.cat([prompt, batch.response_ids[row, :length]])
    with torch.no_grad():
        logits = model(ids[None]).logits[0]  # (P + L, V)
    p = batch.params
    return sampling_logprobs(
        logits[len(prompt) - 1 : len(prompt) - 1 + length], p.temperature, p.top_k, p.top_p
    )


def fidelity(
    dev: torch.device,
    dtype: torch.dtype,
    model_shape: dict[str, int],
    vocab: int,
    tokens: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Recorded ``logp_inf`` and top-k of the transformers engine against a fresh forward."""
    from jackpot.models import ModelSpec, build_model
    from jackpot.rollout import SamplingParams
    from jackpot.rollout.hf import HFRolloutEngine

    spec = ModelSpec(
        vocab_size=vocab, **model_shape, max_position_embeddings=64 + tokens, seed=seed
    )
    model = build_model(spec).to(device=dev, dtype=dtype)
    engine = HFRolloutEngine(model, pad_token_id=0)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (3, 7, 12)]
    name = str(dtype).removeprefix("torch.")
    worst_logp = worst_topk = 0.0
    diffs: list[Tensor] = []
    finite = True
    for temperature, top_k, top_p in FIDELITY_SETTINGS:
        params = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=tokens,
            stop_token_ids=(2,),
            logprobs_k=20,
        )
        batch = engine.generate(prompts, 2, params, torch.Generator(device=dev).manual_seed(seed))
        batch.validate()
        for row in range(batch.num_sequences):
            ref = _fresh_logp(model, batch, row)  # (L, V)
            length = ref.shape[0]
            expected = ref.gather(-1, batch.response_ids[row, :length, None]).squeeze(-1)
            finite = finite and bool(torch.isfinite(expected).all())
            diff = (batch.logp_inf[row, :length] - expected).abs()
            recorded = ref.gather(-1, batch.topk_ids[row, :length])  # (L, k)
            diff_topk = (batch.topk_logp[row, :length] - recorded).abs()
            diff_topk = diff_topk.masked_fill(
                torch.isinf(recorded) & torch.isinf(batch.topk_logp[row, :length]), 0.0
            )
            worst_logp = max(worst_logp, float(diff.max()))
            worst_topk = max(worst_topk, float(diff_topk.max()))
            diffs.append(diff.float().cpu())
    atol, mean_tol = FIDELITY_ATOL[name]
    mean = float(torch.cat(diffs).mean())
    return {
        "dtype": name,
        "max_abs_logp_diff": worst_logp,
        "mean_abs_logp_diff": mean,
        "max_abs_topk_diff": worst_topk,
        "atol": atol,
        "mean_tol": mean_tol,
        "checks": [
            _check(f"{name}: sampled tokens inside the kept set", finite, None, None),
            _check(f"{name}: max |logp_inf - fresh forward|", worst_logp <= atol, worst_logp, atol),
            _check(f"{name}: mean |logp_inf - fresh forward|", mean <= mean_tol, mean, mean_tol),
            _check(
                f"{name}: max |top-k logp - fresh forward|", worst_topk <= atol, worst_topk, atol
            ),
        ],
    }


def _obrs_inputs(rows: int, vocab: int, k: int, seed: int) -> dict[str, Tensor]:
    """Hand-made float64 sampler inputs on CPU: tokens drawn from p_inf, p_target = p_ref.

    The candidate set is ``topk(p_inf) ∪ topk(p_target)`` with both log-probs known exactly.
    """
    from benchmarks.overhead import make_inputs

    inp = make_inputs(rows, vocab, seed)  # float32 logits (B, T, V), tokens drawn from p_inf
    logp_target = torch.log_softmax(inp.logits_new.detach().double(), dim=-1)  # (B, T, V)
    logp_inf = torch.log_softmax(inp.logits_inf.double(), dim=-1)  # (B, T, V)
    ids = inp.tensors.response_ids[..., None]  # (B, T, 1)
    candidates = torch.cat([logp_inf.topk(k).indices, logp_target.topk(k).indices], -1)
    return {
        "logp_inf": logp_inf.gather(-1, ids).squeeze(-1),
        "logp_target": logp_target.gather(-1, ids).squeeze(-1),
        "response_mask": torch.ones(ids.shape[:2], dtype=torch.float64),
        "topk_ids": candidates,  # (B, T, 2k)
        "topk_logp_inf": logp_inf.gather(-1, candidates),
        "topk_logp_target": logp_target.gather(-1, candidates),
        "logits_inf": logp_inf,
        "logits_target": logp_target,
    }


def _run_obrs(
    sampler: Any, inputs: dict[str, Tensor], dev: torch.device, seed: int
) -> dict[str, Tensor]:
    """``sampler`` on ``inputs`` moved to ``dev``; results and acceptance probabilities on CPU."""
    from jackpot.functional import acceptance_prob
    from jackpot.samplers.base import SamplerInput

    x = {k: v.to(dev) for k, v in inputs.items()}
    if sampler.topk is None:
        x = {k: v for k, v in x.items() if not k.startswith("topk_")}
    else:
        x = {k: v for k, v in x.items() if not k.startswith("logits_")}
    batch = SamplerInput(
        logp_ref=x["logp_target"], generator=torch.Generator(device=dev).manual_seed(seed), **x
    )
    out = sampler(batch)
    log_lam = out.metrics["obrs/log_lam"]
    accept = acceptance_prob(x["logp_target"], x["logp_inf"], log_lam=log_lam)
    result = {"mask": out.mask, "weights": out.weights, "accept_prob": accept}
    result.update({k: v for k, v in out.metrics.items() if k.startswith("obrs/")})
    return {k: v.detach().cpu() for k, v in result.items()}


def _rel(a: Tensor, b: Tensor) -> float:
    """Largest relative difference of two tensors (0 when both are empty)."""
    if a.numel() == 0:
        return 0.0
    return float(((a - b).abs() / b.abs().clamp(min=1e-300)).max())


def obrs_device_vs_cpu(
    dev: torch.device, rows: int, vocab: int, budget: float, topk: int, seed: int = 0
) -> dict[str, Any]:
    """OBRS acceptance, lambda, Z and weights on ``dev`` against CPU, same float64 inputs."""
    from jackpot.samplers import get_sampler

    inputs = _obrs_inputs(rows, vocab, topk, seed)
    tokens = int(inputs["response_mask"].sum())
    out: dict[str, Any] = {
        "rows": rows,
        "vocab": vocab,
        "budget": budget,
        "tokens": tokens,
        "variants": {},
    }
    checks = []
    for variant, params in (
        ("exact", {"budget": budget}),
        ("topk", {"budget": budget, "topk": topk}),
    ):
        sampler = get_sampler("obrs", **params)
        cpu = _run_obrs(sampler, inputs, torch.device("cpu"), seed)
        on_dev = _run_obrs(sampler, inputs, dev, seed)
        both = (cpu["mask"] * on_dev["mask"]).bool()
        scalars = [
            k for k in cpu if k.startswith("obrs/") and k not in ("obrs/accept_rate", "obrs/lam")
        ]
        dtype = str(on_dev["weights"].dtype).removeprefix("torch.")
        figures: dict[str, float] = {
            "accept_prob_max_abs_diff": float(
                (cpu["accept_prob"] - on_dev["accept_prob"]).abs().max()
            ),
            "weights_max_rel_diff": _rel(on_dev["weights"][both], cpu["weights"][both]),
            "scalars_max_rel_diff": max(
                _rel(on_dev[k].reshape(1), cpu[k].reshape(1)) for k in scalars
            ),
            "accept_rate_cpu": float(cpu["obrs/accept_rate"]),
            "accept_rate_device": float(on_dev["obrs/accept_rate"]),
            "accept_prob_mean_device": float(on_dev["obrs/accept_prob_mean"]),
        }
        out["variants"][variant] = {"dtype_on_device": dtype, **figures}
        se = math.sqrt(budget * (1 - budget) / tokens)
        checks += [
            _check(
                f"{variant}: float64 stays float64 on the device",
                dtype == "float64",
                dtype,
                "float64",
            ),
            _check(
                f"{variant}: acceptance probabilities device vs CPU (abs)",
                figures["accept_prob_max_abs_diff"] <= FP64_RTOL,
                figures["accept_prob_max_abs_diff"],
                FP64_RTOL,
            ),
            _check(
                f"{variant}: weights device vs CPU on tokens both accept (rel)",
                figures["weights_max_rel_diff"] <= FP64_RTOL,
                figures["weights_max_rel_diff"],
                FP64_RTOL,
            ),
            _check(
                f"{variant}: log lambda, Z, kappa, mean acceptance device vs CPU (rel)",
                figures["scalars_max_rel_diff"] <= FP64_RTOL,
                figures["scalars_max_rel_diff"],
                FP64_RTOL,
            ),
            _check(
                f"{variant}: mean acceptance probability on the device = budget",
                abs(figures["accept_prob_mean_device"] - budget) <= 1e-6,
                figures["accept_prob_mean_device"],
                budget,
            ),
            _check(
                f"{variant}: acceptance rate on the device within 5 s.e. of the budget",
                abs(figures["accept_rate_device"] - budget) <= 5 * se,
                figures["accept_rate_device"],
                f"{budget} ± {5 * se:.3g}",
            ),
        ]
    out["checks"] = checks
    return out


def _kernels(dev: torch.device) -> list[str]:
    """Attention kernels to run the packed forward through on ``dev``."""
    from transformers.utils import is_flash_attn_2_available

    flash = dev.type == "cuda" and is_flash_attn_2_available()
    return ["sdpa", "eager", *(["flash_attention_2"] if flash else [])]


def packing(
    dev: torch.device, dtype: torch.dtype, model_shape: dict[str, int], vocab: int, seed: int = 0
) -> dict[str, Any]:
    """Response log-probs of the packed forward through each attention kernel against the
    padded forward (sdpa), on ragged left-padded prompts and right-padded responses."""
    from jackpot.models import ModelSpec, build_model
    from jackpot.packing import packing_refusal
    from jackpot.rollout.batch import left_pad
    from jackpot.step import forward_logits

    model = build_model(ModelSpec(vocab_size=vocab, **model_shape, seed=seed))
    model = model.to(device=dev, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    prompts, prompt_mask = left_pad(
        [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (3, 7, 12, 5)], 0
    )
    lengths = torch.tensor([9, 1, 5, 16])
    response_mask = (torch.arange(16)[None] < lengths[:, None]).long()
    responses = torch.randint(4, vocab, response_mask.shape, generator=gen) * response_mask
    ids = torch.cat([prompts, responses], 1).to(dev)
    mask = torch.cat([prompt_mask, response_mask], 1).to(dev)
    real = response_mask.bool().to(dev)
    name = str(dtype).removeprefix("torch.")
    atol = FIDELITY_ATOL[name][0]
    with torch.no_grad():
        want = forward_logits(model, ids, mask, prompts.shape[1], 1.0).float().log_softmax(-1)
    diffs: dict[str, float] = {}
    checks = []
    for kernel in _kernels(dev):
        model.set_attn_implementation(kernel)
        with torch.no_grad():
            refusal = packing_refusal(model)
            got = forward_logits(model, ids, mask, prompts.shape[1], 1.0, packed=True)
        diff = float((got.float().log_softmax(-1) - want)[real].abs().max())
        diffs[kernel] = diff
        checks += [
            _check(f"{name} {kernel}: packing probe passes", refusal is None, None, None),
            _check(f"{name} {kernel}: max |packed - padded| logp", diff <= atol, diff, atol),
        ]
    return {"dtype": name, "max_abs_logp_diff": diffs, "atol": atol, "checks": checks}


def correctness(
    device: str, model: dict[str, int], vocab: int, tokens: int, obrs_rows: int, obrs_vocab: int
) -> dict[str, Any]:
    """Part 2: engine fidelity and the packed forward in float32 and bfloat16, OBRS on the
    device against CPU."""
    dev = _device(device)
    out: dict[str, Any] = {"device": device, "fidelity": {}, "packing": {}, "checks": []}
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        res = fidelity(dev, dtype, model, vocab, tokens)
        res["elapsed_s"] = time.perf_counter() - start
        out["fidelity"][res["dtype"]] = res
        out["checks"] += res.pop("checks")
        packed = packing(dev, dtype, model, vocab)
        out["packing"][packed["dtype"]] = packed
        out["checks"] += packed.pop("checks")
    start = time.perf_counter()
    obrs = obrs_device_vs_cpu(dev, obrs_rows, obrs_vocab, budget=0.95, topk=20)
    obrs["elapsed_s"] = time.perf_counter() - start
    out["checks"] += obrs.pop("checks")
    out["obrs"] = obrs
    return out


# ----------------------------------------------------------------------------- local assets


def _assets(work: str, spec: dict[str, Any]) -> Any:
    """The local models, tokenizer and task of ``spec`` under ``work`` (built once, reused)."""
    from benchmarks.assets import AssetSpec, build_assets

    fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return build_assets(Path(work) / "assets", AssetSpec(**fixed))


def model_params(path: Path) -> int:
    """Parameters of the model saved in ``path`` (from its safetensors headers)."""
    from safetensors import safe_open

    total = 0
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is no dict)
                total += math.prod(handle.get_slice(name).get_shape())
    return total


# ----------------------------------------------------------------------------- part 3


def _finite_losses(rows: list[dict[str, float]]) -> tuple[bool, list[str]]:
    """Whether every logged loss of every step is finite, and which loss columns there are."""
    keys = sorted({k for r in rows for k in r if k.startswith("loss/") or k == "distill/loss"})
    return bool(keys) and all(math.isfinite(r[k]) for r in rows for k in keys if k in r), keys


def fit_check(
    work: str,
    assets: dict[str, Any],
    overrides: list[str],
    steps: int,
    budget: float,
    rows_per_step: int,
    device: str,
) -> dict[str, Any]:
    """Part 3: ``python -m jackpot.fit`` (its ``main``, in this process) on the local models."""
    from jackpot.fit import main
    from jackpot.training.csv_logger import read_metrics

    built = _assets(work, assets)
    run_dir = Path(work) / "fit"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [
        "--config",
        str(e2e.CONFIG),
        *fit_overrides(built),
        *overrides,
        f"trainer.max_steps={steps}",
        f"run.dir={run_dir}",
    ]
    start = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - start
    rows = read_metrics(run_dir / "metrics.csv")
    finite, loss_keys = _finite_losses(rows)
    prob = [r.get("obrs/accept_prob_mean", math.nan) for r in rows]
    rate = [r.get("obrs/accept_rate", math.nan) for r in rows]
    tokens = [r.get("response/length", math.nan) * rows_per_step for r in rows]
    skipped = [r.get("train/skipped_updates", math.nan) for r in rows]
    logged_peak = [r["perf/peak_mem_gb"] for r in rows if "perf/peak_mem_gb" in r]
    se = [5 * math.sqrt(budget * (1 - budget) / max(n, 1)) for n in tokens]
    return {
        "command": "python -m jackpot.fit " + " ".join(argv),
        "rc": rc,
        "wall_s": wall,
        "steps": len(rows),
        "loss_keys": loss_keys,
        "losses": {k: [r.get(k, math.nan) for r in rows] for k in loss_keys},
        "accept_prob_mean": prob,
        "accept_rate": rate,
        "step_s": [r.get("perf/step_s", math.nan) for r in rows],
        "response_length": [r.get("response/length", math.nan) for r in rows],
        "peak_mem_gib": _peak_mem_gib(_device(device)),
        "logged_peak_mem_gb": max(logged_peak) if logged_peak else None,
        "params": {"policy": model_params(built.policy), "rollout": model_params(built.rollout)},
        "checks": [
            _check("fit exits with code 0", rc == 0, rc, 0),
            _check("every RL step logged", len(rows) == steps, len(rows), steps),
            _check("every loss finite (" + ", ".join(loss_keys) + ")", finite, None, None),
            _check(
                "no update skipped",
                all(s == 0 for s in skipped) and bool(rows),
                max(skipped, default=None),
                0,
            ),
            _check(
                "mean acceptance probability = budget every step",
                bool(rows) and all(abs(p - budget) <= 1e-3 for p in prob),
                prob,
                budget,
            ),
            _check(
                "acceptance rate within 5 s.e. of the budget every step",
                bool(rows) and all(abs(a - budget) <= s for a, s in zip(rate, se, strict=True)),
                rate,
                budget,
            ),
        ],
    }


# ----------------------------------------------------------------------------- part 6


def fsdp_check(
    work: str, assets: dict[str, Any], overrides: list[str], steps: int, device: str
) -> dict[str, Any]:
    """Part 6: ``trainer.strategy=fsdp`` (FSDP2) on one device for ``steps`` RL steps, then a
    resume from its checkpoint for one more; the resumed run keeps the first run's history."""
    from jackpot.fit import main
    from jackpot.training.csv_logger import read_metrics

    built = _assets(work, assets)
    run_dir = Path(work) / "fsdp"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [
        "--config",
        str(e2e.CONFIG),
        *fit_overrides(built),
        *overrides,
        "trainer.strategy=fsdp",
        f"run.dir={run_dir}",
    ]
    start = time.perf_counter()
    rc = main([*argv, f"trainer.max_steps={steps}"])
    first = read_metrics(run_dir / "metrics.csv")
    saved = (run_dir / "checkpoints" / f"step-{steps:06d}.ckpt").is_file()
    rc_resume = main([*argv, f"trainer.max_steps={steps + 1}", "--resume"])
    wall = time.perf_counter() - start
    rows = read_metrics(run_dir / "metrics.csv")
    finite, loss_keys = _finite_losses(rows)
    skipped = [r.get("train/skipped_updates", math.nan) for r in rows]
    kept = [r.get("reward/mean") for r in rows[:steps]] == [r.get("reward/mean") for r in first]
    return {
        "command": "python -m jackpot.fit " + " ".join(argv),
        "rc": [rc, rc_resume],
        "wall_s": wall,
        "steps": len(rows),
        "losses": {k: [r.get(k, math.nan) for r in rows] for k in loss_keys},
        "grad_norm_policy": [r.get("grad_norm/policy", math.nan) for r in rows],
        "step_s": [r.get("perf/step_s", math.nan) for r in rows],
        "peak_mem_gib": _peak_mem_gib(_device(device)),
        "checks": [
            _check("fit and resume exit with code 0", rc == rc_resume == 0, [rc, rc_resume], 0),
            _check("a full-state checkpoint after the first run", saved, saved, True),
            _check("every RL step logged", len(rows) == steps + 1, len(rows), steps + 1),
            _check("every loss finite (" + ", ".join(loss_keys) + ")", finite, None, None),
            _check("no update skipped", all(x == 0 for x in skipped) and bool(rows), skipped, 0),
            _check("the resumed run keeps the first run's steps", kept, kept, True),
        ],
    }


# ----------------------------------------------------------------------------- parts 4 and 5


def measure(overrides: list[str], steps: int, run_dir: str) -> dict[str, Any]:
    """``steps`` RL steps on ``configs/default.yaml``: per-step metrics and sampler seconds."""
    from jackpot.config import load_config
    from jackpot.fit import run
    from jackpot.training.csv_logger import read_metrics

    sampler_s: list[float] = []
    e2e._time_sampler_calls(sampler_s)
    shutil.rmtree(run_dir, ignore_errors=True)
    extra = [f"run.dir={run_dir}", f"trainer.max_steps={steps}"]
    cfg = load_config(e2e.CONFIG, [*e2e.COMMON, *overrides, *extra])
    start = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - start
    rows = read_metrics(result.metrics_csv)
    per_step = {key: [r.get(key, math.nan) for r in rows] for key in (*e2e.KEYS, *EXTRA_KEYS)}
    return {"wall_s": wall, "per_step": per_step, "sampler_s": sampler_s}


def speed_mode(
    work: str, assets: dict[str, Any], overrides: list[str], steps: int, device: str
) -> dict[str, Any]:
    """Parts 4 and 5: one mode's RL steps on the local models, with this process's peak memory."""
    built = _assets(work, assets)
    run_dir = Path(work) / "speed"
    res = measure([*fit_overrides(built), *overrides], steps, str(run_dir))
    res["peak_mem_gib"] = _peak_mem_gib(_device(device))
    res["params"] = {"policy": model_params(built.policy), "rollout": model_params(built.rollout)}
    sync = [s for s in res["per_step"]["perf/weight_sync_s"] if math.isfinite(s)]
    res["weight_sync_s"] = statistics.median(sync) if sync else None
    return res
