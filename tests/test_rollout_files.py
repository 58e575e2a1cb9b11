"""Offline decoupled training: the trainer fed from rollout files instead of a rollout model."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jackpot.config import ConfigError, load_config, validate
from jackpot.fit import build_module, run
from jackpot.rollout.__main__ import main as rollout_main
from jackpot.rollout.batch import RolloutFormatError
from jackpot.rollout.files import (
    file_for_step,
    load_step_rollouts,
    resolve_rollout_files,
    shard_groups,
)
from jackpot.rollout.hf import HFRolloutEngine
from jackpot.rollout.io import load_rollouts, read_rollout_info, save_rollouts
from jackpot.tasks.synthetic import make_task
from jackpot.training.checkpoints import load_checkpoint_file
from jackpot.training.csv_logger import read_metrics

from .conftest import DEFAULT_CONFIG, tiny_overrides

FILE_REWARDS = [1.0, 0.0, 0.0, 1.0] * 4
"""Rewards written into file 0: its 4 groups of 4 all have signal, mean exactly 0.5."""


@pytest.fixture(scope="module")
def rollout_dir(tmp_path_factory: pytest.TempPathFactory, warmstart_cache: Path) -> Path:
    """Two files: the real CLI (random model, rewards) and the engine (warm-started, texts)."""
    out = tmp_path_factory.mktemp("rollouts")
    argv = ["generate", "--out", str(out / "step-000.safetensors"), "--split", "train"]
    tiny = ["--n-prompts", "4", "--group-size", "4", "--hidden-size", "16", "--num-layers", "1"]
    assert rollout_main([*argv, *tiny, "--num-heads", "2", "--max-new-tokens", "3"]) == 0
    cli_file = load_rollouts(out / "step-000.safetensors")
    save_rollouts(cli_file.with_rewards(FILE_REWARDS), out / "step-000.safetensors")

    cfg = load_config(DEFAULT_CONFIG, tiny_overrides(out / "gen", warmstart_cache))
    torch.set_num_threads(1)  # as trainer.num_threads=1 (fit.run) does for the other tests
    module = build_module(cfg)  # the tiny default task's warm-started rollout model
    examples, tokenizer = module.train_examples[:4], module.tokenizer
    engine = HFRolloutEngine(module.rollout_model, tokenizer.pad_token_id)
    prompt_ids = [tokenizer.encode(e.prompt) for e in examples]
    # The file records p_inf's top-k as the config asks (the run's own sampler needs none).
    params = replace(module.sampling, logprobs_k=cfg.rollout.logprobs_k)
    batch = engine.generate(prompt_ids, 4, params, torch.Generator().manual_seed(1))
    batch = batch.with_texts(
        [e.prompt for e in examples for _ in range(4)],
        [e.answer for e in examples for _ in range(4)],
    )
    save_rollouts(batch, out / "step-001.safetensors")  # no rewards: task.reward scores it
    return out


def offline(run_dir: Path, cache: Path, files: str | Path, steps: int = 2) -> list[str]:
    """The tiny default config trained from ``files`` with top-k OBRS."""
    return [
        *tiny_overrides(run_dir, cache, steps),
        f"rollout.files={files}",
        "algo.train_rollout=false",
        "sampler.topk=4",
    ]


def test_two_steps_from_two_files_then_cycle(
    tmp_path: Path, rollout_dir: Path, warmstart_cache: Path
) -> None:
    cfg = load_config(DEFAULT_CONFIG, offline(tmp_path / "run", warmstart_cache, rollout_dir, 3))
    result = run(cfg)
    rows = read_metrics(result.metrics_csv)
    assert [r["step"] for r in rows] == [0.0, 1.0, 2.0]
    for row in rows:
        for key in ("mismatch/kl_k3", "obrs/accept_rate", "reward/mean", "eval/accuracy"):
            assert math.isfinite(row[key]), (row["step"], key)
        assert 0.0 < row["obrs/accept_rate"] <= 1.0
        assert not any(k.startswith(("rollout/", "distill/")) for k in row)
    assert rows[0]["reward/mean"] == pytest.approx(0.5)  # the file's rewards, not recomputed
    # Step 2 trains on file 0 again (cycling); the policy moved, so the mismatch moved too.
    assert rows[2]["reward/mean"] == pytest.approx(0.5)
    assert rows[2]["mismatch/kl_k3"] != rows[0]["mismatch/kl_k3"]
    assert result.last_checkpoint is not None  # and it holds no rollout model: none was built
    state = load_checkpoint_file(result.last_checkpoint, "cpu")["state_dict"]
    assert state and not any(key.startswith("rollout_model.") for key in state)


def test_glob_spec_and_file_selection(tmp_path: Path, rollout_dir: Path) -> None:
    files = resolve_rollout_files(str(rollout_dir / "*.safetensors"))
    assert [p.name for p in files] == ["step-000.safetensors", "step-001.safetensors"]
    assert resolve_rollout_files(str(rollout_dir)) == files
    assert [file_for_step(files, s).name[5:8] for s in range(5)] == [
        "000", "001", "000", "001", "000"
    ]  # fmt: skip
    (tmp_path / ".hidden.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a rollout file")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        resolve_rollout_files(str(tmp_path))
    with pytest.raises(ValueError, match="no rollout files"):
        file_for_step([], 0)


def test_shards_keep_whole_groups_and_cover_the_file(rollout_dir: Path) -> None:
    files = resolve_rollout_files(str(rollout_dir))
    kwargs = {"temperature": 1.0, "sampler_topk": 4, "vocab_size": None}
    full = load_step_rollouts(files, 0, **kwargs)
    shards = [load_step_rollouts(files, 0, rank=r, world=3, **kwargs) for r in range(3)]
    groups = [set(s.group_ids.tolist()) for s in shards]
    assert groups == [{0, 3}, {1}, {2}]
    for shard in shards:
        assert all(int((shard.group_ids == g).sum()) == 4 for g in shard.group_ids.unique())
    assert sum(s.num_sequences for s in shards) == full.num_sequences
    with pytest.raises(ValueError, match="4 prompt groups cannot feed 5"):
        shard_groups(full, 0, 5)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["algo.mode=on_policy"], "algo.mode='on_policy' is not allowed"),
        (["algo.train_rollout=true"], "algo.train_rollout=true is not allowed"),
        (["sampler.topk=null"], "sampler.topk=None needs the full p_inf"),
        (["sampler.name=rs", "sampler.topk=null", "sampler.budget=null", "sampler.c1=null",
          "sampler.p_target=null"], "sampler.name='rs' needs the full p_inf"),
        (["sampler.topk=9"], "sampler.topk=9 but .* records only the top 8"),
        (["rollout.temperature=0.7"], "rollout.temperature=0.7 but .* temperature 1.0"),
    ],
)  # fmt: skip
def test_bad_offline_configs_are_refused_at_load(
    tmp_path: Path, rollout_dir: Path, extra: list[str], match: str
) -> None:
    overrides = [*offline(tmp_path / "run", tmp_path, rollout_dir), *extra]
    with pytest.raises(ConfigError, match=match):
        load_config(DEFAULT_CONFIG, overrides)


def test_missing_and_empty_file_sets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rollout.files=.*missing.*neither a directory"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="rollout.files=.*holds no"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "empty"))
    with pytest.raises(ConfigError, match="matches no file"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "*.st"))
    cfg = load_config(DEFAULT_CONFIG, tiny_overrides(tmp_path / "run", tmp_path))
    cfg.algo.train_rollout, cfg.rollout.files = False, ""  # YAML ``files: ""``, not the cwd
    with pytest.raises(ConfigError, match="rollout.files='' is empty"):
        validate(cfg)


def test_files_without_rewards_or_texts_and_greedy_files_are_refused(
    tmp_path: Path, rollout_dir: Path
) -> None:
    batch = load_rollouts(rollout_dir / "step-001.safetensors")
    save_rollouts(replace(batch, answers=None), tmp_path / "a" / "x.safetensors")
    with pytest.raises(ConfigError, match="neither a rewards tensor nor prompt and answer"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "a"))
    greedy = replace(batch, params=replace(batch.params, temperature=0.0))
    save_rollouts(greedy, tmp_path / "g" / "x.safetensors")
    with pytest.raises(ConfigError, match="decoded greedily"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "g"))


def test_vocab_mismatch_is_refused_before_training(
    tmp_path: Path, rollout_dir: Path, warmstart_cache: Path
) -> None:
    batch = load_rollouts(rollout_dir / "step-001.safetensors")
    save_rollouts(replace(batch, vocab_size=999), tmp_path / "v" / "x.safetensors")
    cfg = load_config(DEFAULT_CONFIG, offline(tmp_path / "run", warmstart_cache, tmp_path / "v"))
    with pytest.raises(ConfigError, match="vocab_size=999 but the policy scores"):
        build_module(cfg)


def test_corrupt_files_raise_format_errors_naming_the_file(
    tmp_path: Path, rollout_dir: Path, warmstart_cache: Path
) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.safetensors").write_text("not a safetensors file")
    with pytest.raises(RolloutFormatError, match="x.safetensors: file"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "junk"))
    # A sound header over bad values passes the cheap load-time scan, and fails at its step.
    source = rollout_dir / "step-000.safetensors"
    with safe_open(source, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    tensors["logp_inf"][0, 0] = 0.5
    (tmp_path / "bad").mkdir()
    save_file(tensors, tmp_path / "bad" / "x.safetensors", metadata=metadata)
    assert read_rollout_info(tmp_path / "bad" / "x.safetensors").logprobs_k == 8
    cfg = load_config(DEFAULT_CONFIG, offline(tmp_path / "run", warmstart_cache, tmp_path / "bad"))
    with pytest.raises(RolloutFormatError, match="x.safetensors: logp_inf"):
        run(cfg)


def test_files_of_another_task_are_refused_unless_allowed(
    tmp_path: Path, rollout_dir: Path
) -> None:
    batch = load_rollouts(rollout_dir / "step-001.safetensors")
    sort = replace(batch, metadata={**batch.metadata, "source": "synthetic:sort:train"})
    save_rollouts(sort, tmp_path / "sort" / "x.safetensors")
    overrides = offline(tmp_path / "run", tmp_path, tmp_path / "sort")  # an addition run
    with pytest.raises(ConfigError, match=r"source='synthetic:sort:train'.*allow_task_mismatch"):
        load_config(DEFAULT_CONFIG, overrides)
    cfg = load_config(DEFAULT_CONFIG, [*overrides, "rollout.allow_task_mismatch=true"])
    assert cfg.rollout.allow_task_mismatch
    evals = replace(batch, metadata={**batch.metadata, "source": "synthetic:addition:eval"})
    save_rollouts(evals, tmp_path / "eval" / "x.safetensors")
    with pytest.raises(ConfigError, match="trains on 'synthetic:addition:train'"):
        load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "eval"))
    unknown = replace(batch, metadata={})  # another engine's file records no source: not checked
    save_rollouts(unknown, tmp_path / "other" / "x.safetensors")
    load_config(DEFAULT_CONFIG, offline(tmp_path / "run", tmp_path, tmp_path / "other"))


def test_generate_from_the_run_config_with_offsets(
    tmp_path: Path, warmstart_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``generate --config`` takes task, model, warm start and sampling from the run's config;
    ``--offset`` gives each file other prompts; the files then pass the run's checks."""
    overrides = tiny_overrides(tmp_path / "run", warmstart_cache)
    base = ["generate", "--config", str(DEFAULT_CONFIG)]
    for step, offset in ((0, 0), (1, 4)):
        out = tmp_path / "files" / f"step-{step:03d}.safetensors"
        argv = [*base, "--out", str(out), "--offset", str(offset), *overrides]
        assert rollout_main(argv) == 0, capsys.readouterr().err
    first, second = (load_rollouts(p) for p in sorted((tmp_path / "files").iterdir()))
    cfg = load_config(DEFAULT_CONFIG, overrides)
    assert first.num_sequences == cfg.rollout.prompts_per_step * cfg.rollout.group_size
    assert first.params.max_new_tokens == cfg.rollout.max_new_tokens == 3
    assert first.metadata["source"] == "synthetic:addition:train"
    assert first.prompts is not None and second.prompts is not None
    assert not set(first.prompts) & set(second.prompts)  # different prompts per step
    train = make_task(cfg.task.spec()).train
    assert sorted(set(second.prompts)) == sorted(e.prompt for e in train[4:8])
    load_config(DEFAULT_CONFIG, offline(tmp_path / "run", warmstart_cache, tmp_path / "files"))
    # With --config, the flags that would contradict it are refused.
    bad = [*base, "--out", str(tmp_path / "x.safetensors"), "--task", "sort", *overrides]
    assert rollout_main(bad) == 2
    assert "--task cannot be combined with --config" in capsys.readouterr().err
