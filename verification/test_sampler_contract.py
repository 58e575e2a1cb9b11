"""The contract every installed sampler keeps, built-in or third-party plugin.

Parametrised over ``jackpot.samplers.available_samplers()`` (entry points, so plugins are
included automatically). Built-ins run with a small table of valid parameter sets (``obrs``
needs exactly one of ``lam`` / ``budget``); an unknown plugin runs with no parameters.

Inputs carry everything a sampler may need: sampled-token log-probs, full logits of the
sampling distribution of p_inf and of p_target, and the top-k candidate set
``topk(p_inf) ∪ topk(p_target)`` with p_inf unknown (``-inf``) outside its stored top-k.

Contract: ``mask`` only 0/1 and 0 outside ``response_mask``; ``norm_mask`` likewise;
``weights`` finite, non-negative, 0 where ``mask`` is 0, detached (``requires_grad`` False
even when the inputs require grad); everything ``(B, T)``; metrics 0-d, detached, never NaN;
the same generator seed gives the same output; extreme log-probs (0, -1e4, -inf where a
distribution can be 0) give finite output; an all-rejected batch (empty response mask, or
acceptance 0) gives zero weights and no NaN.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from jackpot.samplers import (
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    available_samplers,
    get_sampler,
)

NEG_INF = -math.inf
BUILTIN_PARAMS: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "is": [{}],
    "tis": [{}, {"cap": 1.5}, {"normalize": True}],
    "icepop": [{}, {"alpha": 0.8, "beta": 1.25}],
    "seq_tis": [{}, {"normalize": True}],
    "geo_mask": [{}],
    "seq_icepop": [{}],
    "token_reject": [{}, {"estimator": "k3", "threshold": 0.5}],
    "seq_reject": [
        {},
        {"reduce": "sum", "estimator": "k2", "threshold": 2.0},
        {"reduce": "max", "estimator": "k3", "threshold": 1.0},
    ],
    "rs": [{}],
    "obrs": [
        {"lam": 1.0},
        {"budget": 0.9},
        {"lam": 0.5, "topk": 2},
        {"budget": 0.8, "topk": 2, "kappa_estimator": "count"},
        {"lam": 2.0, "aggregation": "proposal"},
        {"budget": 0.95, "p_target": "new", "c1": math.inf, "c2": math.inf},
    ],
}
CASES = [
    pytest.param(name, params, id=f"{name}-{i}")
    for name in available_samplers()
    for i, params in enumerate(BUILTIN_PARAMS.get(name, [{}]))
]


def make_batch(
    *,
    seed: int = 0,
    b: int = 4,
    t: int = 8,
    v: int = 6,
    k: int = 2,
    dtype: torch.dtype = torch.float32,
    extreme: bool = False,
    garbage_padding: bool = False,
    requires_grad: bool = False,
    empty: bool = False,
    generator_seed: int = 1,
) -> SamplerInput:
    """A consistent batch: tokens drawn from p_inf, log-probs gathered from the logits."""
    g = torch.Generator().manual_seed(seed)
    logits_inf = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    logits_tgt = logits_inf + torch.randn(b, t, v, generator=g, dtype=dtype)
    logits_ref = logits_tgt + 0.3 * torch.randn(b, t, v, generator=g, dtype=dtype)
    if extreme:
        logits_inf[..., 0] = -1e4  # p_inf ~ e^-1e4: ratio r overflows float32/64
        logits_inf[..., 1] = NEG_INF  # truncated by top-k/top-p: never sampled
        logits_inf[..., 2:4] = -30.0  # rare under p_inf: sampled only where forced below
        logits_tgt[..., 2] = NEG_INF  # p_target = 0
        logits_tgt[..., 3] = -1e4  # p_target ~ e^-1e4
        logits_ref[..., 2] = NEG_INF
        logits_tgt[0, 0] = 0.0  # one position where p_target is uniform
    lp_inf = torch.log_softmax(logits_inf, -1)
    lp_tgt = torch.log_softmax(logits_tgt, -1)
    lp_ref = torch.log_softmax(logits_ref, -1)
    tokens = torch.multinomial(lp_inf.exp().reshape(-1, v), 1, generator=g).reshape(b, t)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    if extreme:  # force extreme tokens at a few response positions, keep some padding
        tokens[:, 0] = 0  # log r = +1e4 (p_inf ~ e^-1e4)
        tokens[:, 1] = 3  # log r = -1e4 (p_target ~ e^-1e4)
        tokens[0, 2] = 2  # p_target = 0: one token in the batch, so budgets <= 0.95 stay feasible
        lengths = torch.randint(6, t + 1, (b,), generator=g)
        lengths[0] = 6
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(dtype)
    if empty:
        mask.zero_()

    def at(lp: torch.Tensor) -> torch.Tensor:
        return lp.gather(-1, tokens[..., None]).squeeze(-1)

    logp_inf, logp_tgt, logp_ref = at(lp_inf), at(lp_tgt), at(lp_ref)
    if garbage_padding:  # padding positions hold whatever the pipeline left there
        pad = mask == 0
        logp_tgt = torch.where(pad, torch.full_like(logp_tgt, NEG_INF), logp_tgt)
        logp_ref = torch.where(pad, torch.full_like(logp_ref, -1e4), logp_ref)
        logp_inf = torch.where(pad, torch.zeros_like(logp_inf), logp_inf)
    ids_inf = lp_inf.topk(k, -1).indices
    ids = torch.cat([ids_inf, lp_tgt.topk(k, -1).indices], -1)
    known = (ids[..., :, None] == ids_inf[..., None, :]).any(-1)
    topk_inf = lp_inf.gather(-1, ids)
    topk_inf = torch.where(known, topk_inf, torch.full_like(topk_inf, NEG_INF))
    tensors = {
        "logp_inf": logp_inf,
        "logp_ref": logp_ref,
        "logp_target": logp_tgt,
        "topk_logp_inf": topk_inf,
        "topk_logp_target": lp_tgt.gather(-1, ids),
        "logits_inf": logits_inf,
        "logits_target": logits_tgt,
    }
    if requires_grad:
        tensors = {key: x.detach().clone().requires_grad_(True) for key, x in tensors.items()}
    return SamplerInput(
        response_mask=mask,
        topk_ids=ids,
        generator=torch.Generator().manual_seed(generator_seed),
        **tensors,
    )


def check_contract(out: SamplerOutput, batch: SamplerInput) -> None:
    shape = batch.logp_inf.shape
    resp = batch.response_mask
    for field in ("mask", "weights", "norm_mask"):
        x = getattr(out, field)
        assert isinstance(x, torch.Tensor) and x.shape == shape, field
        assert not x.requires_grad, field
    for field in ("mask", "norm_mask"):
        x = getattr(out, field)
        assert bool(((x == 0) | (x == 1)).all()), f"{field} not binary: {x}"
        assert bool((x[resp == 0] == 0).all()), f"{field} nonzero outside response_mask"
    w = out.weights
    assert bool(w.isfinite().all()), f"non-finite weights {w}"
    assert bool((w >= 0).all()), f"negative weights {w}"
    assert bool((w[out.mask == 0] == 0).all()), "weight on a masked token"
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert not value.requires_grad, key
    nan = sorted(key for key, value in out.metrics.items() if bool(value.isnan()))
    assert not nan, f"NaN metrics: {nan}"


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_ordinary_batch(name: str, params: dict, dtype: torch.dtype) -> None:
    for seed in range(3):
        batch = make_batch(seed=seed, dtype=dtype)
        check_contract(get_sampler(name, **params)(batch), batch)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_contract_inputs_requiring_grad(name: str, params: dict) -> None:
    batch = make_batch(requires_grad=True)
    out = get_sampler(name, **params)(batch)
    check_contract(out, batch)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_contract_same_seed_same_output(name: str, params: dict) -> None:
    outs = [get_sampler(name, **params)(make_batch(seed=4, generator_seed=7)) for _ in range(2)]
    assert torch.equal(outs[0].mask, outs[1].mask)
    assert torch.equal(outs[0].weights, outs[1].weights)
    assert torch.equal(outs[0].norm_mask, outs[1].norm_mask)


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_extreme_log_probs(name: str, params: dict, dtype: torch.dtype) -> None:
    """Sampled tokens with log r = +1e4, log r = -1e4 and p_target = 0 inside the response."""
    batch = make_batch(seed=5, dtype=dtype, extreme=True)
    check_contract(get_sampler(name, **params)(batch), batch)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_contract_garbage_at_padding(name: str, params: dict) -> None:
    """Padding positions hold log p_target = -inf, log p_ref = -1e4, log p_inf = 0 (values a
    pipeline may leave there); they must not leak into weights or metrics."""
    batch = make_batch(seed=5, extreme=True, garbage_padding=True)
    check_contract(get_sampler(name, **params)(batch), batch)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_contract_all_rejected_empty_response(name: str, params: dict) -> None:
    batch = make_batch(seed=6, empty=True)
    out = get_sampler(name, **params)(batch)
    check_contract(out, batch)
    assert bool((out.weights == 0).all()) and bool((out.mask == 0).all())


@pytest.mark.parametrize(("name", "params"), CASES)
def test_contract_all_rejected_empty_response_extreme_padding(name: str, params: dict) -> None:
    """Padding with ``p_target = 0`` at the sampled (padding) token: still no NaN."""
    batch = make_batch(seed=6, empty=True, extreme=True, garbage_padding=True)
    out = get_sampler(name, **params)(batch)
    check_contract(out, batch)
    assert bool((out.weights == 0).all())


def test_obrs_acceptance_zero_batch() -> None:
    """``lam`` so large that every acceptance probability underflows to 0."""
    batch = make_batch(seed=8)
    out = get_sampler("obrs", lam=1e30)(batch)
    check_contract(out, batch)
    assert bool((out.mask == 0).all()) and bool((out.weights == 0).all())


def test_every_builtin_is_installed_and_obrs_requires_lam_or_budget() -> None:
    installed = set(available_samplers())
    assert set(BUILTIN_PARAMS) <= installed
    with pytest.raises(SamplerParameterError, match="lam") as info:
        get_sampler("obrs")
    assert "budget" in str(info.value)
    with pytest.raises(SamplerParameterError):
        get_sampler("obrs", lam=1.0, budget=0.5)
