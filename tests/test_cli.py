"""The command line around a run: entry points, help text, messages, plot and tokenizer checks."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from jackpot.cli import main as cli_main
from jackpot.config import load_config
from jackpot.fit import _quiet_lightning, parser
from jackpot.models import (
    ModelSpec,
    VocabMismatchError,
    build_model,
    check_tokenizer_fits,
    load_tokenizer,
)
from jackpot.rollout.__main__ import main as rollout_main
from jackpot.training.plot import plot_run

from .conftest import DEFAULT_CONFIG, ROOT


def test_python_m_jackpot_dispatches_like_the_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jackpot", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert all(command in out.stdout for command in ("fit", "rollout", "compare"))


def test_compare_is_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out
    assert cli_main(["compare", "--config", "/no/such/compare.yaml"]) == 2


def test_fit_help_is_plain_text() -> None:
    text = parser().format_help()
    assert "``" not in text and ":func:" not in text
    assert "sampler.name=tis" in text and "sampler.lam=1.5" in text


def test_resume_without_checkpoints_says_it_starts_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import jackpot.fit

    class Built(Exception):
        """Stands in for building the models: the message comes before it."""

    def stop(cfg: Any) -> Any:
        raise Built

    monkeypatch.setattr(jackpot.fit, "build_module", stop)
    cfg = load_config(DEFAULT_CONFIG, [f"run.dir={tmp_path / 'new'}", "run.resume=true"])
    with pytest.raises(Built):
        jackpot.fit.run(cfg)
    err = capsys.readouterr().err
    assert "run.resume=true: no checkpoint in" in err and "starting fresh" in err


def test_lightning_tips_and_weights_only_notes_are_filtered() -> None:
    _quiet_lightning()
    _quiet_lightning()  # idempotent: one filter per logger

    def passes(logger: str, message: str) -> bool:
        record = logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)
        return logging.getLogger(logger).filter(record)

    tips = "lightning.pytorch.utilities.rank_zero"
    assert not passes(tips, "💡 Tip: For seamless cloud uploads and versioning, try ...")
    assert passes(tips, "GPU available: False, used: False")
    checkpoints = "lightning.pytorch.trainer.connectors.checkpoint_connector"
    assert not passes(checkpoints, "`weights_only` was not set, defaulting to `False`.")
    assert len(logging.getLogger(tips).filters) == 1


def test_rollout_inspect_names_the_file_in_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a rollout file")
    assert rollout_main(["inspect", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err


def test_run_plot_labels_budget_line_and_distinct_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "metrics.csv"
    lines = ["step,reward/mean,eval/accuracy,obrs/accept_rate,sampler/keep_rate,mismatch/kl_k3"]
    lines += [f"{s},0.{s},0.5,0.9{s},0.9{s},1.{s}" for s in range(5)]
    csv.write_text("\n".join(lines) + "\n")
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    out = plot_run(csv, tmp_path / "plot.png", title="t", budget=0.9)
    assert out.is_file() and out.stat().st_size > 0
    reward, kl, accept = figures[0].axes
    assert all(ax.get_ylabel() for ax in (reward, kl, accept))
    budget_lines = [ln for ln in accept.lines if list(ln.get_ydata()) == [0.9, 0.9]]
    assert len(budget_lines) == 1
    rate_lines = [ln for ln in accept.lines if "rate" in ln.get_label()]
    styles = {(ln.get_linestyle(), ln.get_linewidth()) for ln in rate_lines}
    assert len(rate_lines) == 2 and len(styles) == 2  # equal values, still both visible
    low, high = accept.get_ylim()
    assert 0.8 <= low < 0.9 and 0.94 <= high <= 1.01
    labels = " ".join(ln.get_label() for ln in reward.lines)
    assert "rollout model" in labels and "policy" in labels


# ----------------------------------------------------------------------------- tokenizers


def _tiny_tokenizer(directory: Path, pad: bool) -> Path:
    """A word-level tokenizer of 6 tokens, saved like a checkpoint's (nothing downloaded)."""
    vocab = {"<unk>": 0, "</s>": 1, "1": 2, "2": 3, "+": 4, "=": 5}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    extra = {"pad_token": "<unk>"} if pad else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", unk_token="<unk>", **extra
    )
    fast.save_pretrained(directory)
    return directory


def test_tokenizer_without_pad_pads_with_eos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = load_tokenizer(_tiny_tokenizer(tmp_path / "tok", pad=False))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "no pad token" in said[0] and "'</s>'" in said[0]
    check_tokenizer_fits(tokenizer, build_model(ModelSpec(vocab_size=6, hidden_size=8)), "policy")
    with_pad = load_tokenizer(_tiny_tokenizer(tmp_path / "tok2", pad=True))
    assert with_pad.pad_token_id == 0 and capsys.readouterr().err == ""


def test_tokenizer_ids_outside_the_model_are_refused(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(_tiny_tokenizer(tmp_path / "tok", pad=True))
    small = build_model(ModelSpec(vocab_size=4, hidden_size=8))
    with pytest.raises(VocabMismatchError, match="6 tokens but policy only 4 output logits"):
        check_tokenizer_fits(tokenizer, small, "policy")
    one = build_model(ModelSpec(vocab_size=1, hidden_size=8))
    with pytest.raises(VocabMismatchError, match="eos id is 1, outside the 1 output logits"):
        check_tokenizer_fits(tokenizer, one, "policy")


def test_warm_start_shows_progress_then_says_it_reuses_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jackpot.tasks.synthetic import TaskSpec
    from jackpot.tasks.tokenizer import CharTokenizer
    from jackpot.warmstart import SFTConfig, warm_start

    tokenizer = CharTokenizer()
    spec = ModelSpec(vocab_size=tokenizer.vocab_size, hidden_size=8, num_layers=1, num_heads=2)
    task = TaskSpec(name="addition", n_train=20, n_eval=4, max_digits=1)
    config = SFTConfig(steps=3, batch_size=4)
    first = warm_start(spec, task, tokenizer, config, tmp_path)
    err = capsys.readouterr().err
    assert not first.from_cache
    assert f"fine-tuning qwen2 8x1 on addition for 3 steps (once; cached in {tmp_path})" in err
    assert "3/3" in err and "loss=" in err  # the bar: steps and loss
    second = warm_start(spec, task, tokenizer, config, tmp_path)
    said = capsys.readouterr().err.strip().splitlines()
    assert second.from_cache and len(said) == 1
    assert said[0] == f"warm start: reusing qwen2 8x1 (3 steps on addition) from {second.path}"
