"""Every shipped config loads; every bad input is refused with a message naming the key."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from jackpot.config import ConfigError, JackpotConfig, load_config, to_yaml, validate

from .conftest import DEFAULT_CONFIG, ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.stem.startswith("compare"))
"""Run configs (``compare*.yaml`` describe grids of them; tests/test_compare.py loads those)."""
DEFAULT = DEFAULT_CONFIG


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path: Path, tmp_path: Path) -> None:
    overrides = []
    if path.stem == "qwen3-1.7b-to-8b":  # local weights and data: point them at stand-ins
        for key in ("policy", "rollout_model"):
            (tmp_path / key).mkdir()
            overrides.append(f"{key}.path={tmp_path / key}")
        (tmp_path / "train.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
        overrides.append(f"task.path={tmp_path / 'train.jsonl'}")
    cfg = load_config(path, overrides, check_devices=path.stem != "qwen3-1.7b-to-8b")
    assert cfg.trainer.max_steps >= 1


def test_paper_config_mirrors_the_paper(tmp_path: Path) -> None:
    for key in ("policy", "rollout_model"):
        (tmp_path / key).mkdir()
    (tmp_path / "d.jsonl").write_text("{}\n")
    cfg = load_config(
        ROOT / "configs" / "qwen3-1.7b-to-8b.yaml",
        [
            f"policy.path={tmp_path / 'policy'}",
            f"rollout_model.path={tmp_path / 'rollout_model'}",
            f"task.path={tmp_path / 'd.jsonl'}",
        ],
        check_devices=False,
    )
    assert (cfg.sampler.name, cfg.sampler.topk, cfg.rollout.logprobs_k) == ("obrs", 20, 20)
    assert (cfg.trainer.strategy, cfg.trainer.precision) == ("fsdp", "bf16-mixed")


def test_baseline_configs_change_only_the_method() -> None:
    default = load_config(DEFAULT)
    for name, sampler in [("none", "none"), ("tis", "tis"), ("icepop", "icepop")]:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.sampler.name == sampler
        assert (cfg.policy, cfg.rollout_model, cfg.task, cfg.trainer) == (
            default.policy,
            default.rollout_model,
            default.task,
            default.trainer,
        )
    assert load_config(ROOT / "configs" / "on_policy.yaml").algo.mode == "on_policy"


BAD = [
    (
        ["sampler.name=obrs", "sampler.lam=0"],
        r"sampler.lam=0 is out of range; allowed sampler.lam in \(0, inf\)",
    ),
    (["sampler.name=obrs", "sampler.lam=nan"], "sampler.lam=nan is out of range"),
    (["sampler.name=obrs", "sampler.budget=1.5"], r"sampler.budget=1.5 .* \(0, 1\]"),
    (["sampler.name=obrs", "sampler.budget=0"], "sampler.budget=0 is out of range"),
    (["sampler.name=obrs", "sampler.lam=1", "sampler.budget=0.9"], "mutually exclusive"),
    (["sampler.name=obrs", "sampler.lam=1", "sampler.topk=0"], r"sampler.topk=0 .* \[1, inf\)"),
    (["sampler.name=obrs", "sampler.lam=1", "sampler.c1=0"], "sampler.c1=0 is out of range"),
    (["sampler.name=obrs", "sampler.lam=1", "sampler.c2=-1"], "sampler.c2=-1 is out of range"),
    (["sampler.name=obrs", "sampler.lam=1", "sampler.p_target=old"], "sampler.p_target='old'"),
    (["sampler.name=nope"], "unknown sampler 'nope'; installed samplers: .*obrs"),
    (["sampler.name=tis", "sampler.lam=1"], "sampler.lam given on the command line but"),
    (
        ["sampler.name=icepop", "sampler.alpha=0.9", "sampler.beta=0.5"],
        r"sampler.beta=0.5 is out of range; allowed sampler.beta in \[1, inf\]",
    ),
    (["task.reward=nope"], "task.reward='nope' is unknown; installed rewards"),
    (["task.name=nope"], "task.name='nope' is not allowed"),
    (["trainer.strategy=magic"], "trainer.strategy='magic' is not allowed"),
    (
        ["trainer.strategy=fsdp_cpu_offload"],
        r"trainer.strategy='fsdp_cpu_offload' \(FSDP1\) is not allowed; trainer.strategy=fsdp",
    ),
    (["trainer.strategy=deepspeed"], "strategy='deepspeed' needs trainer.accelerator='gpu'"),
    (
        ["trainer.strategy=deepspeed_stage_3", "trainer.accelerator=gpu", "algo.mode=decoupled"],
        "takes one optimiser and algo.train_rollout=true trains two; choose trainer.strategy=fsdp",
    ),
    (
        ["trainer.strategy=deepspeed", "trainer.accelerator=gpu", "algo.mode=on_policy"],
        "needs the deepspeed package|no GPU is visible",  # whichever this machine lacks
    ),
    (
        ["trainer.strategy=fsdp", "trainer.precision=16-mixed"],
        "trainer.precision='16-mixed' is not allowed with trainer.strategy=fsdp; choose one of",
    ),
    (
        ["trainer.strategy=fsdp", "rollout.files=/nope/*.safetensors"],
        "rollout.files is not allowed with trainer.strategy=fsdp",
    ),
    (
        ["trainer.max_steps=-3"],
        r"trainer.max_steps=-3 is out of range; allowed trainer.max_steps in \[1, inf\)",
    ),
    (["trainer.max_steps=abc"], "trainer.max_steps: Value 'abc'"),
    (["trainer.devices=4096"], "trainer.devices=4096 exceeds the"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu' is not allowed"),
    (["algo.mode=sideways"], "algo.mode='sideways' is not allowed"),
    (["algo.ppo_epochs=0"], "algo.ppo_epochs=0 is out of range"),
    (
        ["algo.policy_loss=foo"],
        r"algo.policy_loss='foo' is not allowed; choose one of \['ppo', 'dual_clip', 'gspo'",
    ),
    (["algo.agg=sum"], r"algo.agg='sum' is not allowed; choose one of \['token-mean', 'token-sum'"),
    (["algo.clip_ratio_c=1"], r"algo.clip_ratio_c=1.0 is out of range; .* in \(1, inf\)"),
    (["algo.clip_eps_high=0"], "algo.clip_eps_high=0.0 is out of range"),
    (["algo.policy_loss=cispo", "algo.clip=false"], "algo.clip=false is not allowed with"),
    (["rollout.temperature=0"], "rollout.temperature=0.0 is out of range"),
    (["rollout.top_p=1.5"], r"rollout.top_p=1.5 .* \(0, 1\]"),
    (["no_such.key=1"], "unknown config key 'no_such'"),
    (["sampler.no_such=1"], "sampler.no_such"),
    (["policy.path=/definitely/not/here"], "policy.path='/definitely/not/here' does not exist"),
    (["task.name=jsonl", "task.path=/nope.jsonl"], "task.path='/nope.jsonl' must be an existing"),
    (["policy.hidden_size=30", "policy.num_heads=4"], "policy.num_heads=4 must divide"),
    (
        ["sampler.name=obrs", "sampler.budget=0.9", "sampler.topk=32"],
        "needs rollout.logprobs_k >= 32",
    ),
    (["task.name=addition", "task.digits=1", "task.num_train=5000"], "too few distinct problems"),
    (["task.name=sort", "task.digits=1"], "max_length must be >= 2"),
    (["rollout.group_size"], "must look like key=value"),
    (["algo.mode=on_policy", "sampler.name=obrs", "sampler.lam=1"], "needs the full p_inf"),
    (["run.dir=${oc.env:HOME}"], "interpolation"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused_with_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["sampler.name=none", *overrides])


def _bounded_fields(section: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(key, metadata kind, what is allowed)`` of every field that declares a range or choices."""
    out = []
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(value):
            out += _bounded_fields(value, f"{prefix}{f.name}.")
        out += [
            (prefix + f.name, k, f.metadata[k]) for k in ("range", "choices") if k in f.metadata
        ]
    return out


BOUNDED = _bounded_fields(JackpotConfig())


@pytest.mark.parametrize(("key", "kind", "allowed"), BOUNDED, ids=[k for k, _, _ in BOUNDED])
def test_every_declared_range_and_choice_is_enforced_with_the_key(
    key: str, kind: str, allowed: Any
) -> None:
    """Set each bounded field just outside what its metadata allows, on a default config."""
    cfg = JackpotConfig()
    *path, leaf = key.split(".")
    bad = "nope" if kind == "choices" else allowed.low - 1
    setattr(functools.reduce(getattr, path, cfg), leaf, bad)
    problem = "is not allowed" if kind == "choices" else f"is out of range; allowed {key} in"
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{key}={bad!r} {problem}')}"):
        validate(cfg, check_devices=False, check_paths=False)


def test_printed_sampler_section_is_flat_and_loads_back(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT, ["sampler.topk=4", "rollout.logprobs_k=4", "sampler.c1=inf"])
    text = to_yaml(cfg)
    assert "  name: obrs\n  budget: 0.9\n" in text and "params" not in text
    printed = tmp_path / "printed.yaml"
    printed.write_text(text)
    again = load_config(printed)
    assert again.sampler == cfg.sampler
    assert (again.sampler.topk, again.sampler.c1, again.sampler.lam) == (4, math.inf, None)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)
    code = tmp_path / "code.yaml"
    code.write_text("run:\n  dir: ${oc.env:HOME}\n")
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(code)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)
    pyobj = tmp_path / "obj.yaml"
    pyobj.write_text("run: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(pyobj)


# ----------------------------------------------------------------------------- sampler switching


def test_command_line_sampler_name_drops_the_files_parameters_it_does_not_take(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = load_config(DEFAULT, ["sampler.name=tis"])
    assert cfg.sampler.name == "tis"
    assert cfg.sampler.kwargs() == {}  # budget, c1 and p_target of the obrs file are gone
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1
    assert all(k in said[0] for k in ("sampler.budget", "sampler.c1", "sampler.p_target"))
    kept = load_config(DEFAULT, ["sampler.name=tis", "sampler.cap=3"])
    assert kept.sampler.kwargs() == {"cap": 3.0}


def test_what_a_sampler_takes_is_read_from_its_constructor(tmp_path: Path) -> None:
    # icepop's alpha and beta come from IcePop.__init__; a file's alpha survives a switch to
    # geo_mask (which takes it too) and is dropped on a switch to tis (which does not).
    path = tmp_path / "icepop.yaml"
    path.write_text("sampler:\n  name: icepop\n  alpha: 0.4\n  beta: 3.0\n")
    assert load_config(path, ["sampler.name=geo_mask"]).sampler.kwargs() == {
        "alpha": 0.4,
        "beta": 3.0,
    }
    assert load_config(path, ["sampler.name=tis"]).sampler.kwargs() == {}


def test_command_line_parameter_the_sampler_does_not_take_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"sampler.budget given on the command line .* cap"):
        load_config(DEFAULT, ["sampler.name=tis", "sampler.budget=0.8"])
    with pytest.raises(ConfigError, match="sampler.gamma given on the command line"):
        load_config(DEFAULT, ["sampler.name=tis", "sampler.gamma=1"])
    # Unsetting a key (null) fits any sampler.
    cfg = load_config(DEFAULT, ["sampler.name=tis", "sampler.budget=null"])
    assert cfg.sampler.budget is None


def test_command_line_lam_replaces_the_files_budget_and_vice_versa(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT, ["sampler.lam=1.5"])
    assert (cfg.sampler.lam, cfg.sampler.budget) == (1.5, None)
    with_lam = tmp_path / "lam.yaml"
    with_lam.write_text("base: " + str(DEFAULT) + "\nsampler:\n  budget: null\n  lam: 2.0\n")
    cfg = load_config(with_lam, ["sampler.budget=0.8"])
    assert (cfg.sampler.lam, cfg.sampler.budget) == (None, 0.8)
    with pytest.raises(ConfigError, match="mutually exclusive"):  # both given: still refused
        load_config(DEFAULT, ["sampler.lam=1.5", "sampler.budget=0.8"])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("sampler.bugdet=0.8", "did you mean 'sampler.budget'"),
        ("trainer.max_step=3", "did you mean 'trainer.max_steps'?"),
        ("budget=0.8", "did you mean 'sampler.budget'"),
        ("samplr.name=tis", "did you mean 'sampler'"),
    ],
)
def test_unknown_keys_get_a_suggestion(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key .*; {suggestion}"):
        load_config(DEFAULT, [override])


def test_unknown_key_in_a_file_gets_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("rollout:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError, match="did you mean 'rollout.temperature'"):
        load_config(path)


def test_paths_are_checked_when_a_run_starts_not_when_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    paper = ROOT / "configs" / "qwen3-1.7b-to-8b.yaml"  # /models/... do not exist here
    with pytest.raises(ConfigError, match="policy.path='/models/Qwen3-8B-Base' does not exist"):
        load_config(paper, check_devices=False)
    cfg = load_config(paper, check_devices=False, check_paths=False)
    assert cfg.policy.path == "/models/Qwen3-8B-Base"
    from jackpot.fit import main

    assert main(["--config", str(paper), "--print-config"]) == 0
    assert "path: /models/Qwen3-8B-Base" in capsys.readouterr().out


def test_math_reward_without_math_verify_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "math_verify" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"jackpot\[math\]"):
        load_config(None, ["task.reward=math_equiv"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["sampler.estimator=k9"], "sampler.name='token_reject': sampler.estimator='k9' is not"),
        (["sampler.estimator=k3"], "sampler.estimator='k3' needs sampler.threshold"),
        (["sampler.reduce=max"], r"sampler.reduce given on the command line but"),
        (["sampler.estimator=k3", "sampler.threshold=0"], "sampler.threshold=0 is out of range"),
    ],
)
def test_new_sampler_parameters_are_refused_at_load(
    overrides: list[str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the class (its entry point exists once the package is reinstalled)."""
    from jackpot.samplers import registry
    from jackpot.samplers.token_reject import TokenRejection

    installed = registry._load_all()
    monkeypatch.setattr(
        registry, "_load_all", lambda: {**installed, "token_reject": TokenRejection}
    )
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["sampler.name=token_reject", *overrides])
