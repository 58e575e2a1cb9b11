"""Registry, parameter errors and behaviour of each built-in sampler."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jackpot.functional as F
from jackpot.samplers import (
    SamplerInput,
    SamplerParameterError,
    available_samplers,
    get_sampler,
    registry,
)

BUILTINS = ["geo_mask", "icepop", "is", "none", "obrs", "rs", "seq_tis", "tis"]
ROOT = Path(__file__).resolve().parents[1]


def make_batch(
    b: int = 16, t: int = 12, v: int = 30, k: int = 4, seed: int = 0, shift: float = 1.0
) -> SamplerInput:
    """Tokens really sampled from p_inf, with full logits and the top-k candidate union."""
    g = torch.Generator().manual_seed(seed)
    logits_inf = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    logits_tgt = logits_inf + shift * torch.randn(b, t, v, generator=g, dtype=torch.float64)
    lsi, lst = logits_inf.log_softmax(-1), logits_tgt.log_softmax(-1)
    ids = torch.multinomial(lsi.exp().reshape(-1, v), 1, generator=g).reshape(b, t)
    mask = torch.ones(b, t, dtype=torch.float64)
    mask[0, t // 2 :] = 0
    cand = torch.cat([lsi.topk(k, -1).indices, lst.topk(k, -1).indices], -1)
    lpt = lst.gather(-1, ids[..., None])[..., 0]
    return SamplerInput(
        logp_inf=lsi.gather(-1, ids[..., None])[..., 0],
        logp_ref=lpt,
        logp_target=lpt,
        response_mask=mask,
        topk_ids=cand,
        topk_logp_inf=lsi.gather(-1, cand),
        topk_logp_target=lst.gather(-1, cand),
        logits_inf=logits_inf,
        logits_target=logits_tgt,
        generator=torch.Generator().manual_seed(seed + 1),
    )


def test_every_builtin_is_registered_under_its_contract_name() -> None:
    assert set(BUILTINS) <= set(available_samplers())
    for name in BUILTINS:
        params = {"lam": 1.0} if name == "obrs" else {}
        assert get_sampler(name, **params).name == name


def test_unknown_sampler_lists_installed_ones() -> None:
    with pytest.raises(ValueError, match="installed samplers: .*obrs.*tis"):
        get_sampler("jackpotx")


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("obrs", {"lam": 0.0}, r"lam=0.0 is out of range; allowed lam in \(0, inf\)"),
        ("obrs", {"lam": float("nan")}, "lam=nan"),
        ("obrs", {"budget": 1.2}, r"budget=1.2 .* \(0, 1\]"),
        ("obrs", {"budget": 0.0}, "budget=0.0"),
        ("obrs", {"lam": 1.0, "budget": 0.9}, "exactly one of lam"),
        ("obrs", {}, "exactly one of lam"),
        ("obrs", {"lam": 1.0, "topk": 0}, r"topk=0 .* \[1, inf\)"),
        ("obrs", {"lam": 1.0, "c1": -1.0}, "c1=-1.0"),
        ("obrs", {"lam": 1.0, "c2": 0.0}, "c2=0.0"),
        ("obrs", {"lam": 1.0, "p_target": "old"}, r"p_target='old' .* \['ref', 'new'\]"),
        ("obrs", {"lam": 1.0, "aggregation": "mean"}, "aggregation='mean'"),
        ("tis", {"cap": 0.0}, r"cap=0.0 .* \(0, inf\)"),
        ("seq_tis", {"cap": -2.0}, "cap=-2.0"),
        ("icepop", {"alpha": 1.0, "beta": 1.0}, "alpha=1.0 must be < beta=1.0"),
        ("icepop", {"alpha": -0.1}, "alpha=-0.1"),
        ("geo_mask", {"alpha": 0.0}, "alpha=0.0"),
        ("tis", {"C": 2.0}, r"unknown parameter\(s\) \['C'\]; it accepts: cap"),
        ("tis", {"cap": True}, r"cap=True is a bool, not a number; allowed cap in \(0, inf\)"),
        ("obrs", {"lam": True}, r"lam=True is a bool, not a number; allowed lam in \(0, inf\)"),
        ("obrs", {"budget": False}, "budget=False is a bool, not a number"),
        ("obrs", {"lam": 1.0, "topk": True}, "topk=True is a bool"),
        ("obrs", {"lam": "1.0"}, "lam='1.0' is a str, not a number"),
        ("icepop", {"beta": True}, "beta=True is a bool"),
        ("geo_mask", {"alpha": False}, "alpha=False is a bool"),
    ],
)
def test_bad_parameters_name_the_parameter_and_range(name: str, params: dict, match: str) -> None:
    with pytest.raises(SamplerParameterError, match=match):
        get_sampler(name, **params)


def test_obrs_budget_holds_the_mean_acceptance() -> None:
    batch = make_batch(b=64, t=32, shift=1.5)
    out = get_sampler("obrs", budget=0.9, aggregation="proposal")(batch)
    assert out.metrics["obrs/accept_prob_mean"].item() == pytest.approx(0.9, abs=1e-9)
    # 0/1 outcomes: binomial noise over ~2000 tokens, 5 standard errors.
    n = batch.response_mask.sum().item()
    assert abs(out.metrics["obrs/accept_rate"].item() - 0.9) < 5 * (0.09 / n) ** 0.5


def test_obrs_reduces_mismatch_and_reports_the_floor() -> None:
    batch = make_batch(b=64, t=32, shift=1.5)
    out = get_sampler("obrs", budget=0.8)(batch)
    m = out.metrics
    assert m["mismatch/kl_k3_after"] < m["mismatch/kl_k3"]
    # The floor is in the direction KL(p_target || p_inf): check that estimate against the
    # exact per-position KL from the full logits, within 5 standard errors of its mean.
    lst, lsi = batch.logits_target.log_softmax(-1), batch.logits_inf.log_softmax(-1)
    exact = (lst.exp() * (lst - lsi)).sum(-1)[batch.response_mask.bool()]
    terms = F.kl_k3_reverse(batch.logp_inf, batch.logp_target)[batch.response_mask.bool()]
    se = float(terms.std()) / len(terms) ** 0.5
    assert abs(m["obrs/kl_target_inf"] - float(exact.mean())) < 5 * se
    log_z = F.normalizer_from_logits(batch.logits_target, batch.logits_inf, m["obrs/lam"]).log()
    floor = float(terms.mean() + log_z[batch.response_mask.bool()].mean())
    assert m["obrs/kl_floor"] == pytest.approx(max(floor, 0.0), rel=1e-6)
    assert 0.0 <= m["obrs/kl_floor"] <= m["obrs/kl_target_inf"]


def test_obrs_weights_match_the_functional_definitions() -> None:
    batch = make_batch()
    lam = 1.2
    out = get_sampler("obrs", lam=lam, c1=1e9, c2=1e9)(batch)
    z = F.normalizer_from_logits(batch.logits_target, batch.logits_inf, lam).double()
    w = z * F.proposal_weight(batch.logp_target, batch.logp_inf, lam)
    torch.testing.assert_close(out.weights, w * out.mask)
    torch.testing.assert_close(out.norm_mask, out.mask)
    prop = get_sampler("obrs", lam=lam, c1=1e9, c2=1e9, aggregation="proposal")(batch)
    torch.testing.assert_close(prop.norm_mask, batch.response_mask)


def test_obrs_topk_kappa_matches_exact_z_on_average() -> None:
    batch = make_batch(b=64, t=32, k=3, shift=1.0)
    exact = get_sampler("obrs", lam=1.0)(batch).metrics["obrs/z_mean"]
    approx = get_sampler("obrs", lam=1.0, topk=3)(batch).metrics
    assert approx["obrs/kappa"] >= 1.0
    assert approx["obrs/z_approx_mean"] <= exact
    # kappa (probability estimator) makes mean(kappa * Z_approx) = mean a(a_t), whose
    # expectation is mean Z_t; per-token a(a_t) has std <= 0.5, 2000 tokens -> SE <= 0.011.
    assert abs(approx["obrs/z_mean"] - exact) < 5 * 0.5 / (64 * 32) ** 0.5


def test_obrs_c1_and_c2_truncate() -> None:
    batch = make_batch()
    batch.logp_target = batch.logp_target + 0.0  # p_target = p_ref: c2 factor is 1
    out = get_sampler("obrs", lam=0.5, c1=0.3)(batch)
    assert out.weights.max() <= 0.3 + 1e-12
    batch.logp_ref = batch.logp_target - 1.0
    batch.generator = torch.Generator().manual_seed(7)
    out2 = get_sampler("obrs", lam=0.5, c1=1e9, c2=1e9)(batch)
    batch.generator = torch.Generator().manual_seed(7)  # same draws -> same mask
    out3 = get_sampler("obrs", lam=0.5, c1=1e9, c2=0.1)(batch)
    torch.testing.assert_close(out3.weights, out2.weights * 0.1 / torch.exp(torch.tensor(-1.0)))


def test_obrs_accepted_mode_without_z_is_a_clear_error() -> None:
    batch = make_batch()
    batch.logits_inf = batch.logits_target = None
    with pytest.raises(ValueError, match="needs Z"):
        get_sampler("obrs", lam=1.0)(batch)


def test_rs_aligns_exactly_and_needs_logits() -> None:
    batch = make_batch(shift=0.3)
    out = get_sampler("rs")(batch)
    assert torch.all(out.weights[out.mask.bool()] == 1.0)
    batch.logits_inf = None
    with pytest.raises(ValueError, match="needs full logits"):
        get_sampler("rs")(batch)


def test_baseline_weights() -> None:
    batch = make_batch()
    batch.logp_ref = (
        batch.logp_inf
        + torch.linspace(-3, 3, batch.logp_inf.numel()).reshape(batch.logp_inf.shape).double()
    )
    ratio = (batch.logp_ref - batch.logp_inf).exp()
    resp = batch.response_mask
    torch.testing.assert_close(get_sampler("is")(batch).weights, ratio * resp)
    torch.testing.assert_close(
        get_sampler("tis", cap=2.0)(batch).weights, ratio.clamp(max=2) * resp
    )
    ice = get_sampler("icepop", alpha=0.5, beta=2.0)(batch)
    inside = ((ratio >= 0.5) & (ratio <= 2.0)).double() * resp
    torch.testing.assert_close(ice.mask, inside)
    torch.testing.assert_close(ice.weights, ratio * inside)
    seq = get_sampler("seq_tis", cap=5.0)(batch)
    per_seq = ((batch.logp_ref - batch.logp_inf) * resp).sum(-1).clamp(-20, 20).exp().clamp(max=5)
    torch.testing.assert_close(seq.weights, per_seq[:, None] * resp)
    geo = get_sampler("geo_mask", alpha=0.5, beta=2.0)(batch)
    g = ((batch.logp_ref - batch.logp_inf) * resp).sum(-1) / resp.sum(-1)
    keep = ((g.exp() >= 0.5) & (g.exp() <= 2.0)).double()
    torch.testing.assert_close(geo.mask, keep[:, None] * resp)


def test_geo_mask_clamps_each_token_before_the_mean_as_verl() -> None:
    """verl 0.9.1 ``seq_mean_k1`` on this row: tokens 25 and -50 clamp to +-20, mean -0.2146
    (verl's statistic k1 = +0.2146) is inside [log 0.5, log 2]: kept. Averaging the raw
    log-ratios first gives -3.786 and would mask the row."""
    lr = torch.tensor([[-0.2991, 25.0, -0.6721, -50.0, -0.3038, -0.3734, 0.1464]])
    lr = lr.double()
    logp_inf = torch.full_like(lr, -60.0)
    logp_ref = logp_inf + lr
    mask = torch.ones_like(lr)
    g = F.geo_mean_log_ratio(logp_ref, logp_inf, mask)
    assert g.item() == pytest.approx(-0.2146, abs=5e-5)
    assert lr.mean().item() == pytest.approx(-3.786, abs=5e-4)  # the old, unclamped statistic
    batch = SamplerInput(logp_inf, logp_ref, logp_ref, mask)
    out = get_sampler("geo_mask", alpha=0.5, beta=2.0)(batch)
    assert out.mask.tolist() == [[1.0] * 7]
    # A band that excludes the clamped mean (alpha > e^-0.2146 = 0.807) masks the row.
    assert get_sampler("geo_mask", alpha=0.85, beta=2.0)(batch).mask.sum().item() == 0.0


def test_third_party_sampler_is_found_after_install(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT / "examples" / "custom_sampler"),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    try:
        importlib.invalidate_caches()
        registry._load_all.cache_clear()
        assert "clipped_ratio" in available_samplers()
        out = get_sampler("clipped_ratio", cap=3.0)(make_batch())
        assert out.weights.max() <= 3.0
        with pytest.raises(SamplerParameterError, match="cap=0.5"):
            get_sampler("clipped_ratio", cap=0.5)
    finally:
        sys.path.remove(str(target))
        registry._load_all.cache_clear()


def test_broken_plugin_warns_instead_of_crashing(tmp_path: Path, monkeypatch) -> None:
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[jackpot.samplers]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._load_all.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="'broken' .* failed to load"):
            names = available_samplers()
        assert "obrs" in names and "broken" not in names
    finally:
        registry._load_all.cache_clear()
