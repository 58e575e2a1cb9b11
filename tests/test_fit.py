"""End-to-end runs of the real default config, shrunk: smoke, resume, crash, many processes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from jackpot.config import load_config
from jackpot.fit import main, run
from jackpot.training.checkpoints import CheckpointError, latest_valid_checkpoint
from jackpot.training.csv_logger import read_metrics

from .conftest import DEFAULT_CONFIG, ROOT, tiny_overrides

REQUIRED_KEYS = {
    "reward/mean",
    "reward/std",
    "eval/accuracy",
    "eval/pass_at_k",
    "response/length",
    "obrs/accept_rate",
    "obrs/z_mean",
    "mismatch/kl_k1",
    "mismatch/kl_k3",
    "mismatch/kl_k1_after",
    "mismatch/kl_k3_after",
    "weights/mean",
    "weights/max",
    "weights/ess",
    "ppo/clip_frac",
    "policy/entropy",
    "rollout/entropy",
    "distill/loss",
    "grad_norm/policy",
    "grad_norm/rollout",
    "perf/rollout_tokens_per_s",
    "perf/train_tokens_per_s",
}


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jackpot.fit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_smoke_two_steps_of_the_default_config(tmp_path: Path, warmstart_cache: Path) -> None:
    start = time.perf_counter()
    cfg = load_config(DEFAULT_CONFIG, tiny_overrides(tmp_path / "run", warmstart_cache))
    cfg.run.plot = True
    result = run(cfg)
    rows = read_metrics(result.metrics_csv)
    assert [r["step"] for r in rows] == [0.0, 1.0]
    assert set(rows[-1]) >= REQUIRED_KEYS, REQUIRED_KEYS - set(rows[-1])
    assert all(math.isfinite(v) for v in rows[-1].values())
    # The policy is evaluated before its first update too: every curve starts at step 0.
    assert 0.0 <= rows[0]["eval/start_accuracy"] <= rows[0]["eval/start_pass_at_k"] <= 1.0
    assert "eval/start_accuracy" not in rows[1]
    assert 0.0 < rows[-1]["obrs/accept_rate"] <= 1.0
    assert result.plot is not None and result.plot.stat().st_size > 10_000
    assert (result.run_dir / "config.yaml").is_file()
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "step-000002.ckpt"
    assert time.perf_counter() - start < 60


def test_resumed_run_matches_the_uninterrupted_one(tmp_path: Path, warmstart_cache: Path) -> None:
    full = load_config(DEFAULT_CONFIG, tiny_overrides(tmp_path / "full", warmstart_cache, steps=4))
    reference = read_metrics(run(full).metrics_csv)
    part = load_config(DEFAULT_CONFIG, tiny_overrides(tmp_path / "part", warmstart_cache, steps=2))
    run(part)
    resumed_cfg = load_config(
        DEFAULT_CONFIG,
        [*tiny_overrides(tmp_path / "part", warmstart_cache, steps=4), "run.resume=true"],
    )
    resumed = read_metrics(run(resumed_cfg).metrics_csv)
    assert [r["step"] for r in resumed] == [0.0, 1.0, 2.0, 3.0]
    for ref, got in zip(reference, resumed, strict=True):
        for key in ("reward/mean", "mismatch/kl_k3", "obrs/accept_rate", "distill/loss"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (ref["step"], key)


def test_sigkill_mid_run_then_resume_loses_only_uncheckpointed_steps(
    tmp_path: Path, warmstart_cache: Path
) -> None:
    run_dir = tmp_path / "killed"
    args = ["--config", str(DEFAULT_CONFIG), *tiny_overrides(run_dir, warmstart_cache, steps=40)]
    # Build the warm-start cache first so the kill lands in training, not in SFT.
    load_config(DEFAULT_CONFIG, tiny_overrides(run_dir, warmstart_cache))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackpot.fit", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_dir = run_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(ckpt_dir.glob("step-*.ckpt"))) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = latest_valid_checkpoint(ckpt_dir)
    assert last is not None
    done = int(last.stem.split("-")[1])
    rows_before = read_metrics(run_dir / "metrics.csv")
    # Resume to a few steps past the checkpoint: the history up to it is kept, nothing repeats.
    out = _cli(*args, f"trainer.max_steps={done + 2}", "--resume")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [float(s) for s in range(done + 2)]
    kept = {r["step"]: r for r in rows_before if r["step"] < done}
    for step, before in kept.items():
        assert rows[int(step)]["reward/mean"] == before["reward/mean"]


def test_corrupt_checkpoint_is_refused_and_the_previous_one_used(
    tmp_path: Path, warmstart_cache: Path
) -> None:
    cfg = load_config(DEFAULT_CONFIG, tiny_overrides(tmp_path / "run", warmstart_cache, steps=2))
    cfg.trainer.keep_checkpoints = 3
    run(cfg)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    newest = ckpt_dir / "step-000002.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="step-000002.ckpt.* corrupt, truncated"):
        assert latest_valid_checkpoint(ckpt_dir) == ckpt_dir / "step-000001.ckpt"
    from jackpot.training.checkpoints import load_checkpoint_file

    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint_file(newest)


def test_checkpoints_refuse_pickled_code(tmp_path: Path) -> None:
    from jackpot.training.checkpoints import load_checkpoint_file

    evil = tmp_path / "step-000001.ckpt"
    torch.save({"state_dict": {}, "payload": os.system}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint_file(evil)


def test_cli_bad_config_exits_2_without_traceback_and_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    args = ("--config", str(DEFAULT_CONFIG), f"run.dir={run_dir}", "sampler.lam=1.0")
    out = _cli(*args, "sampler.budget=0.9")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "sampler.lam=1.0 and sampler.budget=0.9 are mutually exclusive" in out.stderr
    assert not run_dir.exists()


def test_print_config_shows_resolved_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(DEFAULT_CONFIG), "--print-config", "sampler.budget=0.8"]) == 0
    shown = capsys.readouterr().out
    assert "budget: 0.8" in shown and "name: obrs" in shown


def test_console_script_dispatches_fit() -> None:
    from jackpot.cli import main as cli_main

    assert cli_main(["fit", "--config", str(DEFAULT_CONFIG), "--print-config"]) == 0
    assert cli_main(["nope"]) == 2


def test_nonfinite_updates_are_skipped_then_the_run_stops_with_a_checkpoint(
    tmp_path: Path, warmstart_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN rewards past the reward check (numerics gone bad): every update is non-finite,
    skipped, then the run stops. (A reward function's own NaN is refused: test_bad_inputs.)"""
    from jackpot.module import JackpotModule, NonFiniteError

    def nan_rewards(self: JackpotModule, rollout: Any) -> torch.Tensor:
        return torch.full((rollout.num_sequences,), math.nan)

    monkeypatch.setattr(JackpotModule, "_rewards", nan_rewards)
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            *tiny_overrides(tmp_path / "run", warmstart_cache, steps=5),
            "algo.max_nonfinite_skips=3",
            "algo.minibatches=2",
        ],
    )
    with pytest.raises(NonFiniteError, match="3 consecutive updates .* last good state saved"):
        run(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows[0]["train/skipped_updates"] == 1.0  # both minibatches of step 0 skipped
    assert (tmp_path / "run" / "checkpoints" / "nonfinite-stop.ckpt").is_file()


VERL_LOSSES = {
    "dual_clip": ["algo.policy_loss=dual_clip"],
    "gspo": ["algo.policy_loss=gspo", "algo.agg=seq-mean-token-mean"],
    "cispo": ["algo.policy_loss=cispo", "algo.clip_eps_high=0.28"],
    "gmpo": ["algo.policy_loss=gmpo", "algo.agg=seq-mean-token-sum"],
    "reinforce": ["algo.policy_loss=reinforce", "algo.agg=token-sum"],
    "ppo-bypass": ["algo.bypass_old_logprobs=true"],
}


@pytest.mark.parametrize("name", list(VERL_LOSSES))
def test_two_steps_of_each_verl_policy_loss(
    name: str, tmp_path: Path, warmstart_cache: Path
) -> None:
    """Each policy loss (and the bypass) trains both models with the default OBRS sampler."""
    overrides = [*tiny_overrides(tmp_path / "run", warmstart_cache), "trainer.eval_every=0"]
    rows = read_metrics(run(load_config(DEFAULT_CONFIG, overrides + VERL_LOSSES[name])).metrics_csv)
    assert [r["step"] for r in rows] == [0.0, 1.0]
    assert all(math.isfinite(v) for v in rows[-1].values())
    assert "loss/policy" in rows[-1] and rows[-1]["grad_norm/rollout"] > 0


VERL_SAMPLERS = {
    "token_reject": ["sampler.estimator=k3", "sampler.threshold=0.5"],
    "seq_reject": ["sampler.reduce=sum", "sampler.alpha=0.2", "sampler.beta=5.0"],
    "seq_icepop": [],
    "tis": ["sampler.normalize=true"],
}


@pytest.mark.parametrize("name", list(VERL_SAMPLERS))
def test_two_steps_of_each_verl_sampler(
    name: str, tmp_path: Path, warmstart_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new samplers in a run, found through their classes (their entry points exist only
    once the package is reinstalled)."""
    from jackpot.samplers import registry
    from jackpot.samplers.seq_icepop import SequenceIcePop
    from jackpot.samplers.seq_reject import SequenceRejection
    from jackpot.samplers.token_reject import TokenRejection

    installed = registry._load_all()
    new = {c.name: c for c in (TokenRejection, SequenceRejection, SequenceIcePop)}
    monkeypatch.setattr(registry, "_load_all", lambda: {**installed, **new})
    overrides = [*tiny_overrides(tmp_path / "run", warmstart_cache), "trainer.eval_every=0"]
    overrides += [f"sampler.name={name}", *VERL_SAMPLERS[name]]
    rows = read_metrics(run(load_config(DEFAULT_CONFIG, overrides)).metrics_csv)
    assert [r["step"] for r in rows] == [0.0, 1.0]
    assert all(math.isfinite(v) for v in rows[-1].values())
    assert 0.0 < rows[-1]["sampler/keep_rate"] <= 1.0
    assert {"mismatch/chi2_token", "mismatch/chi2_seq", "mismatch/training_ppl"} <= set(rows[-1])
