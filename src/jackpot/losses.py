"""Losses of jackpot: group advantages, aggregation, the OBRS-weighted PPO loss, distillation.

Pure torch (no Lightning, transformers or omegaconf). Conventions: per-token tensors are
``(B, T)`` over response positions, masks are float 0/1 ``(B, T)``, log-probs are natural logs,
logits are ``(B, T, V)``. Objectives are maximised, losses minimised: ``loss = -objective``.

Paper: Chen et al., "Jackpot", arXiv 2602.06107, eq. 5-8 (see docs/math.md). Where verl
has the same quantity (``verl/trainer/ppo/core_algos.py``) the definition matches it, or the
docstring says how it differs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from jackpot.functional.estimators import seq_reduce
from jackpot.functional.logits import map_rows_checkpointed

__all__ = [
    "ADVANTAGE_MODES",
    "AGG_MODES",
    "KL_DIRECTIONS",
    "POLICY_LOSSES",
    "AdvantageMode",
    "AggMode",
    "KLDirection",
    "PolicyLossKind",
    "aggregate",
    "broadcast_to_tokens",
    "cispo_objective",
    "distill_kl_full",
    "distill_kl_topk",
    "dual_clip_surrogate",
    "gmpo_surrogate",
    "group_advantages",
    "gspo_surrogate",
    "loss_denominator",
    "policy_loss",
    "ppo_surrogate",
    "reinforce_objective",
    "rollout_model_loss",
]

AdvantageMode = Literal["grpo", "drgrpo", "rloo"]
AggMode = Literal[
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
KLDirection = Literal["forward", "reverse"]
PolicyLossKind = Literal["ppo", "dual_clip", "gspo", "cispo", "gmpo", "reinforce"]
ADVANTAGE_MODES: tuple[str, ...] = ("grpo", "drgrpo", "rloo")
AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
KL_DIRECTIONS: tuple[str, ...] = ("forward", "reverse")
POLICY_LOSSES: tuple[str, ...] = ("ppo", "dual_clip", "gspo", "cispo", "gmpo", "reinforce")

# verl clamps log-ratios to +-20 before exp; beyond that the ratio carries no usable signal.
_LOG_RATIO_CLAMP = 20.0
# verl's GSPO caps the log of its sequence ratio at 10 (not 20) before exp.
_GSPO_LOG_RATIO_MAX = 10.0
# Floor on an importance weight before its log (GMPO's geometric mean of the weights).
_WEIGHT_FLOOR = 1e-10
# Floor on the teacher's "other" mass in the top-k reverse KL: 1 - sum(top-k probs) is only
# known to ~k * fp32 eps, and a 0 there would make KL(p_w || p_new) infinite.
_OTHER_MASS_FLOOR = 1e-8


# --------------------------------------------------------------------------- validation helpers


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listed}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_clip(clip_eps: float, clip_eps_high: float | None) -> None:
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if clip_eps_high is not None and not clip_eps_high > 0:
        raise ValueError(f"clip_eps_high must be > 0 or None, got {clip_eps_high}")


def _acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype of a KL: float64 stays float64, anything else (bf16, fp16) -> fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else an exact 0 that keeps ``num``'s grad_fn."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), num * 0.0)


# --------------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: Tensor, group_ids: Tensor, mode: AdvantageMode = "grpo", eps: float = 1e-6
) -> Tensor:
    """Group-relative advantages of one scalar reward per response ``(N,)`` -> ``(N,)``.

    ``grpo``: ``(R - mean_g) / (std_g + eps)`` with the unbiased std (verl
    ``compute_grpo_outcome_advantage``); ``drgrpo``: ``R - mean_g`` (Dr.GRPO, no std);
    ``rloo``: ``R_i - mean_{j != i} R_j``, which equals verl's ``G/(G-1) * (R_i - mean_g)``.
    Groups may be ragged. A group of size 1 gets advantage 0 (verl instead passes ``R`` or
    ``R/(1+eps)`` through); all-equal rewards give exactly 0. Computed in float64, no grad.
    """
    _check_choice("mode", mode, ADVANTAGE_MODES)
    _check_positive("eps", eps)
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (N,), got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if (
        group_ids.dtype.is_floating_point
        or group_ids.dtype.is_complex
        or group_ids.dtype == torch.bool
    ):
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.get_default_dtype()
    r = rewards.detach().to(torch.float64)
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # inv: (N,) group index in [0, G)
    zeros = r.new_zeros(uniq.numel())  # (G,)
    count = zeros.index_add(0, inv, torch.ones_like(r))  # (G,)
    # Shift by a member of each group before averaging: all-equal groups become exact zeros
    # (a plain mean can round, and GRPO's 1/(std + eps) would blow the rounding up).
    ref = torch.full_like(zeros, float("-inf")).scatter_reduce(0, inv, r, reduce="amax")
    shifted = r - ref[inv]
    dev = shifted - (zeros.index_add(0, inv, shifted) / count)[inv]  # R - mean_g, (N,)
    n = count[inv]
    if mode == "grpo":
        var = zeros.index_add(0, inv, dev.square()) / (count - 1).clamp(min=1)  # unbiased
        adv = dev / (var.sqrt()[inv] + eps)
    elif mode == "drgrpo":
        adv = dev
    else:  # rloo: R_i - (S - R_i)/(G - 1) = G/(G - 1) * (R_i - S/G)
        adv = dev * n / (n - 1).clamp(min=1)
    return torch.where(n > 1, adv, torch.zeros_like(adv)).to(out_dtype)


def broadcast_to_tokens(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """Copy each response's advantage ``(N,)`` onto its response tokens -> ``(N, T)``."""
    if advantages.dim() != 1 or response_mask.dim() != 2 or len(advantages) != len(response_mask):
        raise ValueError(
            f"need advantages (N,) and response_mask (N, T), got {tuple(advantages.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    return advantages[:, None] * response_mask.to(advantages.dtype)


# -------------------------------------------------------------------------------- aggregation


def loss_denominator(
    norm_mask: Tensor, mode: AggMode = "token-mean", max_len: int | None = None
) -> Tensor:
    """The scalar :func:`aggregate` divides by, computed from a whole minibatch's ``norm_mask``.

    Passing it to :func:`aggregate` on each micro-batch makes the micro-batch losses add up to
    the loss of the unsplit minibatch (gradient accumulation without changing the mean):
    ``token-mean`` counts the norm tokens, ``token-sum`` is 1, ``seq-mean-token-mean`` and
    ``seq-mean-token-sum`` count the sequences that have any, ``seq-mean-token-sum-norm`` is
    ``max_len x B``.
    """
    _check_choice("mode", mode, AGG_MODES)
    if norm_mask.dim() != 2:
        raise ValueError(f"norm_mask must be (B, T), got {tuple(norm_mask.shape)}")
    norm = norm_mask.to(_acc_dtype(norm_mask))
    if mode == "token-mean":
        return norm.sum()
    if mode == "token-sum":
        return torch.ones((), dtype=norm.dtype, device=norm.device)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return (norm.sum(-1) > 0).sum().to(norm.dtype)
    if max_len is None or isinstance(max_len, bool) or not max_len > 0:
        raise ValueError(f"max_len must be a positive int for mode {mode!r}, got {max_len}")
    return torch.tensor(float(max_len * max(norm.shape[0], 1)), dtype=norm.dtype)


def aggregate(
    values: Tensor,
    loss_mask: Tensor,
    norm_mask: Tensor,
    mode: AggMode = "token-mean",
    max_len: int | None = None,
    denominator: Tensor | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``(B, T)`` to a scalar; numerator over ``loss_mask``,
    denominator counted on ``norm_mask`` (verl ``agg_loss`` with the two masks split).

    - ``token-mean``: ``sum(loss_mask * v) / sum(norm_mask)``.
    - ``token-sum``: ``sum(loss_mask * v)``, no normalisation (scales with the batch).
    - ``seq-mean-token-mean``: mean, over sequences with ``sum_t norm_mask > 0``, of
      ``sum_t(loss_mask * v) / sum_t norm_mask``.
    - ``seq-mean-token-sum``: mean, over the same sequences, of ``sum_t(loss_mask * v)``.
    - ``seq-mean-token-sum-norm``: mean over all ``B`` sequences of ``sum_t(loss_mask * v) /
      max_len`` (Dr.GRPO; ``norm_mask`` unused). Current verl divides by its
      ``loss_scale_factor`` the same way; older verl summed over sequences (``B`` times larger).

    ``denominator`` (from :func:`loss_denominator` of the whole minibatch) replaces the one of
    these rows, for a micro-batch of a gradient-accumulated minibatch.

    OBRS: the paper's mode passes ``norm_mask = loss_mask`` (accepted tokens) with weights
    ``Z * max(lam, r)``; the "proposal" mode passes ``norm_mask = response_mask`` with weights
    ``max(lam, r)``. ``loss_mask`` should lie inside ``norm_mask``. Positions outside
    ``loss_mask`` are ignored even if ``values`` is inf/NaN there. An empty denominator (every
    token rejected, empty responses, ``B = 0``) gives an exact 0 whose grad_fn still reaches
    ``values`` (backward gives zero gradients), never NaN.
    """
    _check_choice("mode", mode, AGG_MODES)
    if values.dim() != 2:
        raise ValueError(f"values must be (B, T), got {tuple(values.shape)}")
    _check_same_shape(values=values, loss_mask=loss_mask, norm_mask=norm_mask)
    loss_mask = loss_mask.to(values.dtype)
    norm_mask = norm_mask.to(values.dtype)
    masked = torch.where(loss_mask != 0, values * loss_mask, torch.zeros_like(values))  # (B, T)
    if mode == "seq-mean-token-mean":  # numerator: the sum of per-sequence means
        numerator = _safe_ratio(masked.sum(-1), norm_mask.sum(-1)).sum()
    else:
        numerator = masked.sum()
    if denominator is None:
        denominator = loss_denominator(norm_mask, mode, max_len)
    return _safe_ratio(numerator, denominator.to(values.dtype))


# ---------------------------------------------------------------------------------------- PPO


def _clamped_log_ratio(logp_new: Tensor, logp_old: Tensor) -> Tensor:
    """``logp_new - logp_old`` clamped to [-20, 20] (verl's bound before exp), ``(B, T)``."""
    return torch.clamp(logp_new - logp_old, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def _clipped(ratio: Tensor, advantages: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """``min(r A, clip(r, 1 - low, 1 + high) A)`` and where the clipped branch is strictly
    smaller, ``(B, T)``."""
    unclipped = ratio * advantages
    clipped_obj = torch.clamp(ratio, 1.0 - low, 1.0 + high) * advantages
    return torch.minimum(unclipped, clipped_obj), clipped_obj < unclipped


def ppo_surrogate(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    clip: bool = True,
) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective per token (to maximise) and where clipping is active, ``(B, T)``.

    ``min(r A, clip(r, 1 - clip_eps, 1 + clip_eps_high) A)`` with ``r = exp(logp_new -
    logp_old)``, the log-ratio clamped to [-20, 20] first (as verl). ``clip=False`` is the
    paper's no-clip ablation: ``r A``. ``clipped`` is True where the clipped branch is strictly
    smaller (verl's ``pg_clipfrac``). Dual-clip is :func:`dual_clip_surrogate`.
    """
    _check_clip(clip_eps, clip_eps_high)
    _check_same_shape(logp_new=logp_new, logp_old=logp_old, advantages=advantages)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(_clamped_log_ratio(logp_new, logp_old))
    if not clip:
        unclipped = ratio * advantages
        return unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    return _clipped(ratio, advantages, clip_eps, high)


def dual_clip_surrogate(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    clip_ratio_c: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """Dual-clip PPO (Ye et al. 2020; verl's ``vanilla`` loss): PPO's objective, floored at
    ``clip_ratio_c x A`` where ``A < 0``, so a huge ratio cannot drive an unbounded step.

    Per token ``(B, T)``: the objective and where a clip bounds it (PPO's or the floor).
    """
    if not clip_ratio_c > 1:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    ppo, clipped = ppo_surrogate(logp_new, logp_old, advantages, clip_eps, clip_eps_high)
    floor = clip_ratio_c * advantages
    floored = (advantages < 0) & (floor > ppo)
    return torch.where(floored, floor, ppo), clipped | floored


def gspo_surrogate(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """GSPO (Zheng et al. 2025): PPO's clipped objective on the sequence ratio
    ``s = exp(mean_t log(p_new/p_old))`` over ``mask`` (the tokens that enter the loss).

    Token form as verl: ``log s_t = sg(log s) + logp_new - sg(logp_new)``, capped at 10 before
    exp, so each token's gradient is ``s A grad logp_new``. ``(B, T)`` objective and clipped.
    """
    _check_clip(clip_eps, clip_eps_high)
    _check_same_shape(logp_new=logp_new, logp_old=logp_old, advantages=advantages, mask=mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_s = seq_reduce(logp_new - logp_old, mask, "mean").detach()  # (B,)
    log_st = (logp_new - logp_new.detach() + log_s[:, None]).clamp(max=_GSPO_LOG_RATIO_MAX)
    return _clipped(torch.exp(log_st), advantages, clip_eps, high)


def cispo_objective(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1): ``sg(clip(r, 1 - clip_eps, 1 + clip_eps_high)) A logp_new``.

    The clipped ratio only weights the REINFORCE term, so no token loses its gradient (unlike
    PPO's clip). ``(B, T)`` objective and where the weight is clipped (verl's ``pg_clipfrac``).
    """
    _check_clip(clip_eps, clip_eps_high)
    _check_same_shape(logp_new=logp_new, logp_old=logp_old, advantages=advantages)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(_clamped_log_ratio(logp_new, logp_old)).detach()
    weight = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    return weight * advantages * logp_new, weight != ratio


def gmpo_surrogate(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """GMPO (Zhao et al. 2025): the geometric mean over ``mask`` of the token ratios, each
    clipped in log space to ``[-clip_eps, clip_eps_high]`` on the pessimistic side of ``A``.

    Per sequence ``A_seq exp(mean_t sgn(A) min(sgn(A) l_t, sgn(A) clip(l_t)))`` (the mean
    log-ratio capped at +-20), times the geometric mean of ``weights`` over ``mask`` (verl),
    broadcast onto its tokens ``(B, T)``; clipped where the clipped log-ratio was chosen.
    """
    _check_clip(clip_eps, clip_eps_high)
    _check_same_shape(logp_new=logp_new, logp_old=logp_old, advantages=advantages, mask=mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_r = logp_new - logp_old
    sign = torch.sign(advantages)
    pessimistic = sign * torch.minimum(sign * log_r, sign * log_r.clamp(-clip_eps, high))
    log_ratio = seq_reduce(pessimistic, mask, "mean").clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    objective = seq_reduce(advantages, mask, "mean") * torch.exp(log_ratio)  # (B,)
    if weights is not None:
        log_w = weights.detach().clamp(min=_WEIGHT_FLOOR).log()
        objective = objective * torch.exp(seq_reduce(log_w, mask, "mean"))
    return objective[:, None].expand_as(logp_new), (pessimistic != log_r) & (advantages != 0)


def reinforce_objective(logp_new: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor]:
    """REINFORCE: ``A logp_new`` per token ``(B, T)`` (importance weights multiply it in
    :func:`policy_loss`, as verl's bypass ``reinforce``); nothing is clipped."""
    _check_same_shape(logp_new=logp_new, advantages=advantages)
    objective = advantages * logp_new
    return objective, torch.zeros_like(objective, dtype=torch.bool)


def _objective(
    kind: PolicyLossKind,
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    weights: Tensor | None,
    clip_eps: float,
    clip_eps_high: float | None,
    clip: bool,
    clip_ratio_c: float,
) -> tuple[Tensor, Tensor]:
    """The weighted per-token objective ``(B, T)`` of policy loss ``kind`` and its clip flags."""
    _check_choice("kind", kind, POLICY_LOSSES)
    if not clip and kind != "ppo":
        raise ValueError(f"clip=False (the no-clip ablation) is for kind 'ppo' only, got {kind!r}")
    if kind == "gmpo":  # weights enter as their geometric mean per sequence
        return gmpo_surrogate(
            logp_new, logp_old, advantages, loss_mask, weights, clip_eps, clip_eps_high
        )
    if kind == "ppo":
        obj, clipped = ppo_surrogate(logp_new, logp_old, advantages, clip_eps, clip_eps_high, clip)
    elif kind == "dual_clip":
        obj, clipped = dual_clip_surrogate(
            logp_new, logp_old, advantages, clip_eps, clip_eps_high, clip_ratio_c
        )
    elif kind == "gspo":
        obj, clipped = gspo_surrogate(
            logp_new, logp_old, advantages, loss_mask, clip_eps, clip_eps_high
        )
    elif kind == "cispo":
        obj, clipped = cispo_objective(logp_new, logp_old, advantages, clip_eps, clip_eps_high)
    else:
        obj, clipped = reinforce_objective(logp_new, advantages)
    if weights is not None:
        _check_same_shape(logp_new=logp_new, weights=weights)
        obj = obj * weights.detach()
    return obj, clipped


def policy_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    norm_mask: Tensor,
    weights: Tensor | None,
    *,
    kind: PolicyLossKind = "ppo",
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    clip: bool = True,
    clip_ratio_c: float = 3.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    denominator: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Jackpot's policy loss (spec "Losses"): ``-agg_t[m_t rho_t f_t]``, ``f`` the per-token
    objective of ``kind`` (``ppo``: ``min(r_t A_t, clip(r_t) A_t)``; see :data:`POLICY_LOSSES`).

    All per-token ``(B, T)``. ``loss_mask`` = OBRS accepted mask x response mask (also the
    tokens of the sequence means of ``gspo`` / ``gmpo``); ``norm_mask`` per :func:`aggregate`
    (the weights must match it); ``weights`` = rho (detached here; None means 1; ``gmpo`` takes
    their geometric mean per sequence); ``denominator`` as in :func:`aggregate` (micro-batches).
    ``clip=False`` (``ppo`` only) is the no-clip ablation. Stats (detached scalars):
    ``clip_frac`` = share of ``loss_mask`` tokens where a clip binds, ``approx_kl`` = k3
    estimate of ``KL(p_old || p_new)`` on those tokens (verl's ``ppo_kl`` is k1; the tokens
    come from p_inf, so it is a diagnostic). Empty ``loss_mask`` gives 0 for both.
    """
    _check_same_shape(logp_new=logp_new, loss_mask=loss_mask, norm_mask=norm_mask)
    objective, clipped = _objective(
        kind,
        logp_new,
        logp_old,
        advantages,
        loss_mask,
        weights,
        clip_eps,
        clip_eps_high,
        clip,
        clip_ratio_c,
    )
    loss = -aggregate(objective, loss_mask, norm_mask, agg, max_len, denominator)
    with torch.no_grad():
        mask = loss_mask.to(logp_new.dtype)
        n_tok = mask.sum()
        log_ratio = _clamped_log_ratio(logp_new, logp_old)
        k3 = torch.expm1(log_ratio) - log_ratio  # k3 of KL(old || new); see functional.kl_k3
        stats = {
            "clip_frac": _safe_ratio((clipped.to(mask.dtype) * mask).sum(), n_tok),
            "approx_kl": _safe_ratio(torch.where(mask != 0, k3 * mask, 0.0).sum(), n_tok),
        }
    return loss, stats


def rollout_model_loss(
    logp_w: Tensor,
    logp_w_old: Tensor,
    logp_inf: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    tis_cap: float = 2.0,
    kind: PolicyLossKind = "ppo",
    bypass: bool = False,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    clip: bool = True,
    clip_ratio_c: float = 3.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    denominator: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The rollout model p_w's policy loss (spec "Losses"), truncated-IS corrected, no OBRS.

    :func:`policy_loss` of ``kind`` with ratio ``p_w / p_w_old`` (``p_w / p_inf`` when
    ``bypass``: the engine's log-probs are the old policy); weight ``min(p_w_old / p_inf,
    tis_cap)`` (detached; verl's token TIS: log-ratio clamped to +-20, truncated from above
    only); ``loss_mask = norm_mask = response_mask``. All ``(B, T)``. Stats: those of
    :func:`policy_loss` plus ``tis_mean`` and ``tis_capped_frac`` over response tokens.
    """
    _check_positive("tis_cap", tis_cap)
    _check_same_shape(logp_w=logp_w, logp_w_old=logp_w_old, logp_inf=logp_inf)
    with torch.no_grad():
        raw = torch.exp(_clamped_log_ratio(logp_w_old, logp_inf))
        tis = raw.clamp(max=tis_cap)
    loss, stats = policy_loss(
        logp_w,
        logp_inf if bypass else logp_w_old,
        advantages,
        response_mask,
        response_mask,
        tis,
        kind=kind,
        clip_eps=clip_eps,
        clip_eps_high=clip_eps_high,
        clip=clip,
        clip_ratio_c=clip_ratio_c,
        agg=agg,
        max_len=max_len,
        denominator=denominator,
    )
    with torch.no_grad():
        mask = response_mask.to(tis.dtype)
        n_tok = mask.sum()
        stats["tis_mean"] = _safe_ratio((tis * mask).sum(), n_tok)
        stats["tis_capped_frac"] = _safe_ratio(((raw > tis_cap).to(mask.dtype) * mask).sum(), n_tok)
    return loss, stats


# ------------------------------------------------------------------------------- distillation


def _kl_rows_full(logits_teacher: Tensor, logits_student: Tensor, reverse: bool) -> Tensor:
    """Per-row KL ``(n, V), (n, V) -> (n,)`` in fp32 (fp64 if given); 0 log 0 terms are 0."""
    dtype = _acc_dtype(logits_student)
    logp = torch.log_softmax(logits_teacher.to(dtype), dim=-1)  # (n, V)
    logq = torch.log_softmax(logits_student.to(dtype), dim=-1)  # (n, V)
    # Double where: 0 * log 0 terms are 0, and their gradient is 0 rather than NaN.
    if reverse:
        q = logq.exp()
        return (q * torch.where(q > 0, logq - logp, 0.0)).sum(-1)
    p = logp.exp()
    return (p * torch.where(p > 0, logp - logq, 0.0)).sum(-1)


def _kl_rows_topk(
    topk_ids: Tensor, topk_logp: Tensor, logits_student: Tensor, reverse: bool
) -> Tensor:
    """Per-row KL on the teacher's top-k support plus one lumped "other" bucket -> ``(n,)``."""
    s = logits_student.to(_acc_dtype(logits_student))  # (n, V)
    lse = torch.logsumexp(s, dim=-1)  # (n,)
    logq_k = s.gather(-1, topk_ids) - lse[:, None]  # (n, k)
    in_support = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, topk_ids, True)  # (n, V)
    rest_empty = in_support.all(-1)  # (n,) k covers the vocabulary
    # finfo.min, not -inf: logsumexp over all -inf has a NaN gradient.
    rest = s.masked_fill(in_support, torch.finfo(s.dtype).min)
    logq_o = torch.logsumexp(rest, dim=-1) - lse  # (n,), q_o == 0 exactly when rest_empty
    logp_k = topk_logp.to(s.dtype)  # (n, k)
    p_k = logp_k.exp()
    p_o = (1.0 - p_k.double().sum(-1)).clamp(min=0.0).to(s.dtype)  # (n,)
    if reverse:
        q_k, q_o = logq_k.exp(), logq_o.exp()
        logp_o = p_o.clamp(min=_OTHER_MASS_FLOOR).log()
        kl = (q_k * torch.where(q_k > 0, logq_k - logp_k, 0.0)).sum(-1)
        return kl + q_o * torch.where(q_o > 0, logq_o - logp_o, 0.0)
    # The teacher's leftover mass is rounding noise when the student's bucket is empty (k = V).
    p_o = torch.where(rest_empty, torch.zeros_like(p_o), p_o)
    kl = (p_k * torch.where(p_k > 0, logp_k - logq_k, 0.0)).sum(-1)
    return kl + p_o * torch.where(p_o > 0, p_o.log() - logq_o, 0.0)


def distill_kl_full(
    logits_teacher: Tensor,
    logits_student: Tensor,
    response_mask: Tensor,
    direction: KLDirection = "forward",
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    chunk_size: int = 1024,
    denominator: Tensor | None = None,
) -> Tensor:
    """Distillation loss (spec "Losses"): ``agg_t KL(SG(p_new) || p_w)`` from full logits.

    ``logits_teacher`` (p_new, detached) and ``logits_student`` (p_w) are ``(B, T, V)`` over the
    same vocabulary; ``direction="reverse"`` gives ``KL(p_w || SG(p_new))``. Rows are processed
    ``chunk_size`` flattened positions at a time in fp32 (fp64 stays fp64), so there is never a
    full ``(B, T, V)`` fp32 log_softmax copy; backward recomputes each chunk (activation
    checkpointing), so extra memory is O(chunk_size x V) there too. Gradient reaches the student
    only. ``denominator`` as in :func:`aggregate` (micro-batches).
    """
    _check_choice("direction", direction, KL_DIRECTIONS)
    _check_positive("chunk_size", chunk_size)
    if logits_student.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got {tuple(logits_student.shape)}")
    _check_same_shape(logits_teacher=logits_teacher, logits_student=logits_student)
    _check_same_shape(logits=logits_student[..., 0], response_mask=response_mask)
    b, t, v = logits_student.shape
    reverse = direction == "reverse"

    def rows(student: Tensor, teacher: Tensor) -> Tensor:
        return _kl_rows_full(teacher, student, reverse)

    kl = map_rows_checkpointed(
        rows,
        chunk_size,
        logits_student.reshape(b * t, v),
        logits_teacher.detach().reshape(b * t, v),
    )
    return aggregate(kl.reshape(b, t), response_mask, response_mask, agg, max_len, denominator)


def distill_kl_topk(
    teacher_topk_ids: Tensor,
    teacher_topk_logp: Tensor,
    student_logits: Tensor,
    response_mask: Tensor,
    direction: KLDirection = "forward",
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    chunk_size: int = 1024,
    denominator: Tensor | None = None,
) -> Tensor:
    """Sparse distillation loss: the KL of :func:`distill_kl_full` on the teacher's top-k support.

    ``teacher_topk_ids`` ``(B, T, k)`` (distinct per position) and ``teacher_topk_logp``
    ``(B, T, k)`` (p_new's normalised log-probs there, detached); ``student_logits`` ``(B, T, V)``.
    Approximation: the mass outside the k ids is lumped into one "other" bucket on both sides
    (``1 - sum p_k`` and ``1 - sum q_k``), a coarsening that can only lower the KL (data
    processing); exact when k = V. For the reverse KL the teacher's bucket is floored at 1e-8.
    Chunked and checkpointed as :func:`distill_kl_full`.
    """
    _check_choice("direction", direction, KL_DIRECTIONS)
    _check_positive("chunk_size", chunk_size)
    if student_logits.dim() != 3 or teacher_topk_ids.dim() != 3:
        raise ValueError(
            f"need (B, T, k) ids and (B, T, V) logits, got {tuple(teacher_topk_ids.shape)} "
            f"and {tuple(student_logits.shape)}"
        )
    _check_same_shape(teacher_topk_ids=teacher_topk_ids, teacher_topk_logp=teacher_topk_logp)
    _check_same_shape(
        ids=teacher_topk_ids[..., 0], logits=student_logits[..., 0], response_mask=response_mask
    )
    b, t, v = student_logits.shape
    k = teacher_topk_ids.shape[-1]
    if k > v:
        raise ValueError(f"top-k size must be <= vocabulary size {v}, got k={k}")
    reverse = direction == "reverse"

    def rows(student: Tensor, ids: Tensor, logp: Tensor) -> Tensor:
        return _kl_rows_topk(ids, logp, student, reverse)

    kl = map_rows_checkpointed(
        rows,
        chunk_size,
        student_logits.reshape(b * t, v),
        teacher_topk_ids.reshape(b * t, k).long(),
        teacher_topk_logp.detach().reshape(b * t, k),
    )
    return aggregate(kl.reshape(b, t), response_mask, response_mask, agg, max_len, denominator)
