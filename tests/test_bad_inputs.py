"""Every bad file or plugin a user hands ``jackpot.fit`` ends in one line on stderr naming it,
exit code 2, no traceback (unless ``--debug``), and nothing a rerun with the fixed input
trips over.

Each case writes a bad input, runs ``main`` in-process, checks the refusal, then fixes the
input and reruns: the run must succeed (refusals before training also leave no run dir).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, T5Config

from jackpot.fit import main
from jackpot.rollout.__main__ import main as rollout_main
from jackpot.tasks import rewards
from jackpot.tasks.rewards import RewardError, checked_reward
from jackpot.training.csv_logger import read_metrics

from .conftest import DEFAULT_CONFIG, ROOT, tiny_overrides

PROG = "python -m jackpot.fit"
GOOD_RECORDS = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(4)]
"""Twelve prompts the char tokenizer encodes: 10 train, 2 eval."""


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _base(tmp_path: Path, steps: int = 1) -> list[str]:
    """The tiny default config on a local data file, random models, no evaluation."""
    return [
        "--config",
        str(DEFAULT_CONFIG),
        *tiny_overrides(tmp_path / "run", tmp_path / "cache", steps),
        "task.name=jsonl",
        f"task.path={tmp_path / 'data.jsonl'}",
        "trainer.eval_every=0",
    ]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run ``main(argv)``; assert the exit code, one refusal line, no traceback; return it."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{PROG}: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------- model dirs

WORDS = {"<unk>": 0, "</s>": 1, "1": 2, "2": 3, "+": 4, "=": 5}


def _model_dir(directory: Path, vocab: int = 8, hidden: int = 8) -> Path:
    """A tiny Qwen2 checkpoint with a 6-word tokenizer, as save_pretrained writes it."""
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    core = Tokenizer(WordLevel(WORDS, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    ).save_pretrained(directory)
    return directory


def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def _t5(directory: Path) -> None:
    shutil.rmtree(directory)
    T5Config(vocab_size=8, d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4).save_pretrained(
        directory
    )


def _drop_tokenizer(directory: Path) -> None:
    for file in directory.iterdir():
        if "token" in file.name:
            file.unlink()


def _other_shapes(directory: Path) -> None:
    _edit_config(directory, hidden_size=16, intermediate_size=32)


def _vocab_too_small(directory: Path) -> None:
    shutil.rmtree(directory)
    _model_dir(directory, vocab=4)
    # the tokenizer's 6 words need 6 logits


@dataclass
class ModelCase:
    """A broken ``<key>.path`` directory and the words its refusal must hold."""

    break_it: Callable[[Path], object]
    needle: str
    key: str = "policy"


MODEL_CASES = {
    "missing": ModelCase(shutil.rmtree, "policy.path='{path}' does not exist"),
    "empty": ModelCase(lambda d: [shutil.rmtree(d), d.mkdir()], "policy.path='{path}' is empty"),
    "config_not_json": ModelCase(
        lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"
    ),
    "config_a_list": ModelCase(
        lambda d: (d / "config.json").write_text("[1, 2]"), "config.json holds no model_type"
    ),
    "no_config": ModelCase(
        lambda d: (d / "config.json").unlink(), "policy.path='{path}' has no config.json"
    ),
    "unknown_model_type": ModelCase(
        lambda d: _edit_config(d, model_type="nope"), "model_type='nope', which transformers"
    ),
    "not_a_causal_lm": ModelCase(_t5, "model_type='t5' is not a causal language model"),
    "no_weights": ModelCase(
        lambda d: (d / "model.safetensors").unlink(), "the weights do not load (OSError"
    ),
    "corrupt_weights": ModelCase(
        lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64 + b"garbage" * 100),
        "the weights do not load (SafetensorError",
    ),
    "weights_of_another_config": ModelCase(_other_shapes, "weight(s) do not fit config.json"),
    "no_tokenizer": ModelCase(_drop_tokenizer, "policy.path='{path}' has no tokenizer"),
    "tokenizer_larger_than_model": ModelCase(
        _vocab_too_small, "the tokenizer has 6 tokens but policy only 4 output logits"
    ),
    "rollout_model_config_not_json": ModelCase(
        lambda d: (d / "config.json").write_text("{"),
        "rollout_model.path='{path}': config.json is not valid JSON",
        key="rollout_model",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_bad_model_dirs_are_refused(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = MODEL_CASES[case]
    _jsonl(tmp_path / "data.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}] * 6)
    dirs = {k: _model_dir(tmp_path / k) for k in ("policy", "rollout_model")}
    argv = [
        *_base(tmp_path),
        *(f"{k}.path={d}" for k, d in dirs.items()),
        "sampler.topk=4",  # the 8-token models: full-vocabulary logits not needed
    ]
    c.break_it(dirs[c.key])
    line = refused(capsys, argv)
    assert c.needle.format(path=dirs[c.key]) in line, line
    assert not (tmp_path / "run").exists()
    if dirs[c.key].exists():
        shutil.rmtree(dirs[c.key])
    _model_dir(dirs[c.key])
    assert main(argv) == 0, capsys.readouterr().err[-2000:]


# ----------------------------------------------------------------------------- data files


def _parquet(path: Path, columns: dict[str, list[Any]] | None = None) -> None:
    """``columns`` (default: the good records) as a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns) if columns is not None else pa.Table.from_pylist(GOOD_RECORDS)
    pq.write_table(table, path)


@dataclass
class DataCase:
    """A bad ``task.path`` file: its name, how to write it, the words of its refusal."""

    name: str
    write: Callable[[Path], object]
    needle: str
    extra: list[str] = field(default_factory=list)


DATA_CASES = [
    DataCase("data.jsonl", lambda p: None, "task.path='{path}' must be an existing jsonl file"),
    DataCase("data.jsonl", lambda p: p.write_text(""), "{path} holds no records"),
    DataCase("data.jsonl", lambda p: p.write_text("\n  \n"), "{path} holds no records"),
    DataCase("data.jsonl", lambda p: p.write_bytes(bytes(range(128, 256)) * 4), "not UTF-8 text"),
    DataCase("data.jsonl", lambda p: p.write_text("prompt,answer\n1+1=,2\n"), "{path}:1: invalid"),
    DataCase("data.jsonl", lambda p: p.write_text(json.dumps(GOOD_RECORDS, indent=1)), ":1: inv"),
    DataCase("data.jsonl", lambda p: _jsonl(p, [[1, 2]]), "{path}:1: expected a JSON object"),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, [*GOOD_RECORDS, {"prompt": ["1+1="], "answer": "2"}]),
        "{path}:13: field 'prompt' is a list",
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, [{"prompt": {"text": "1+1="}, "answer": "2"}]),
        "{path}:1: field 'prompt' is a dict",
    ),
    DataCase(
        "data.jsonl", lambda p: _jsonl(p, [{"prompt": "1+1="}]), "{path}:1: missing field 'answer'"
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, [{"prompt": "  ", "answer": "2"}]),
        "{path}:1: field 'prompt' is blank",
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, [*GOOD_RECORDS, {"prompt": "1" * 600, "answer": "2"}]),
        "{path}:13: the prompt has 601 tokens but policy fits 509",
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, [{"prompt": "1+1=é", "answer": "2"}]),
        "{path}:1: character 'é'",
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, GOOD_RECORDS[:1]),
        "task.path='{path}' holds 1 record; give it at least 2",
    ),
    DataCase(
        "data.jsonl",
        lambda p: _jsonl(p, GOOD_RECORDS),
        "rollout.max_new_tokens=600 leaves no room for a prompt",
        ["rollout.max_new_tokens=600"],
    ),
    DataCase("data.csv", lambda p: p.write_text("a,b\n"), "{path}: unknown dataset suffix '.csv'"),
    DataCase(
        "data.parquet",
        lambda p: _jsonl(p, GOOD_RECORDS),
        "{path} is not a readable Parquet file",
        ["task.name=parquet"],
    ),
    DataCase(
        "data.parquet",
        lambda p: p.write_bytes(b""),
        "{path} is not a readable Parquet file",
        ["task.name=parquet"],
    ),
    DataCase(
        "data.parquet",
        lambda p: _parquet(p, {"prompt": [], "answer": []}),
        "{path} holds no records",
        ["task.name=parquet"],
    ),
    DataCase(
        "data.parquet",
        lambda p: _parquet(p, {"question": ["1+1="], "answer": ["2"]}),
        "missing column(s) ['prompt']",
        ["task.name=parquet"],
    ),
    DataCase(
        "data.parquet",
        lambda p: _parquet(p, {"prompt": [["1+1="]], "answer": ["2"]}),
        "{path} row 0: field 'prompt' is a list",
        ["task.name=parquet"],
    ),
]


DATA_IDS = [
    "missing",
    "empty",
    "blank_lines_only",
    "binary",
    "csv",
    "json_array",
    "record_not_an_object",
    "prompt_a_list",
    "prompt_a_dict",
    "answer_missing",
    "prompt_blank",
    "prompt_too_long",
    "prompt_outside_the_alphabet",
    "one_record",
    "no_room_for_prompts",
    "unknown_suffix",
    "parquet_not_parquet",
    "parquet_empty_file",
    "parquet_no_rows",
    "parquet_column_missing",
    "parquet_prompt_a_list",
]
"""The test ids of DATA_CASES, in order."""
NEEDS_PYARROW = pytest.mark.skipif(find_spec("pyarrow") is None, reason="pyarrow is optional")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=i, marks=[NEEDS_PYARROW] if c.name.endswith(".parquet") else [])
        for i, c in zip(DATA_IDS, DATA_CASES, strict=True)
    ],
)
def test_bad_data_files_are_refused(
    case: DataCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / case.name
    case.write(path)
    argv = [*_base(tmp_path), f"task.path={path}", *case.extra]
    line = refused(capsys, argv)
    assert case.needle.format(path=path) in line, line
    assert not (tmp_path / "run").exists()
    fixed = tmp_path / ("data.parquet" if case.name.endswith(".parquet") else "data.jsonl")
    if fixed.suffix == ".parquet":
        _parquet(fixed)
    else:
        _jsonl(fixed, GOOD_RECORDS)
    extra = [x for x in case.extra if not x.startswith("rollout.max_new_tokens")]
    assert main([*_base(tmp_path), f"task.path={fixed}", *extra]) == 0


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow fails
    line = refused(capsys, [*_base(tmp_path), "task.name=parquet", f"task.path={path}"])
    assert f"{path}: reading Parquet needs pyarrow: pip install pyarrow" in line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- rewards

PLUGIN = '''
import math

CALLS = 0


def boom(prompts, completions, answers):
    """Fine on its first call, then the verifier crashes."""
    global CALLS
    CALLS += 1
    if CALLS >= 2:
        raise ValueError("the verifier crashed")
    return [0.0] * len(completions)


def nan(prompts, completions, answers):
    return [math.nan] * len(completions)


def inf(prompts, completions, answers):
    return [0.0] * (len(completions) - 1) + [math.inf]


def short(prompts, completions, answers):
    return [0.0]


def nothing(prompts, completions, answers):
    return None


def strings(prompts, completions, answers):
    return ["1"] * len(completions)
'''

REWARDS = ("boom", "nan", "inf", "short", "nothing", "strings")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed distribution declaring the bad rewards in ``jackpot.rewards``."""
    plugin = tmp_path_factory.mktemp("plugin")
    dist = plugin / "bad_rewards-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-rewards\nVersion: 0.1\n")
    points = "".join(f"bad_{n} = jackpot_bad_rewards:{n}\n" for n in REWARDS)
    (dist / "entry_points.txt").write_text(f"[jackpot.rewards]\n{points}")
    (plugin / "jackpot_bad_rewards.py").write_text(PLUGIN)
    return plugin


@pytest.fixture
def bad_rewards(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bad rewards, installed for one test (call counts reset)."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    rewards._registry.cache_clear()
    sys.modules.pop("jackpot_bad_rewards", None)
    yield
    rewards._registry.cache_clear()
    sys.modules.pop("jackpot_bad_rewards", None)


REWARD_CASES = {
    "nan": "task.reward='bad_nan' returned nan for completion 0 of 16: ",
    "inf": "task.reward='bad_inf' returned inf for completion 15 of 16: ",
    "short": "task.reward='bad_short' returned 1 rewards for 16 completions",
    "nothing": "task.reward='bad_nothing' returned a NoneType; it must return a list of 16 numbers",
    "strings": "task.reward='bad_strings' returned '1' (str) for completion 0 of 16",
}


@pytest.mark.parametrize("case", list(REWARD_CASES), ids=list(REWARD_CASES))
@pytest.mark.usefixtures("bad_rewards")
def test_bad_reward_values_stop_the_run(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _jsonl(tmp_path / "data.jsonl", GOOD_RECORDS)
    line = refused(capsys, [*_base(tmp_path), f"task.reward=bad_{case}"])
    assert REWARD_CASES[case] in line, line
    assert "--resume" not in line  # failed at step 0: no checkpoint to resume from
    assert main(_base(tmp_path)) == 0  # the leftovers of step 0 do not stop a fresh run


@pytest.mark.usefixtures("bad_rewards")
def test_reward_raising_mid_run_names_it_and_keeps_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _jsonl(tmp_path / "data.jsonl", GOOD_RECORDS)
    argv = _base(tmp_path, steps=3)
    line = refused(capsys, [*argv, "task.reward=bad_boom"])
    last = tmp_path / "run" / "checkpoints" / "step-000001.ckpt"
    assert line.endswith(f"; run.dir keeps its last checkpoint {last}: rerun with --resume")
    assert "raised ValueError: the verifier crashed on completion 0 of 16: " in line
    assert last.is_file()
    assert main([*argv, "--resume"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [0.0, 1.0, 2.0]


def test_checked_reward_finds_the_completion_at_fault() -> None:
    def picky(prompts: object, completions: list[str], answers: object) -> list[float]:
        if any("bad" in c for c in completions):
            raise KeyError("bad")
        return [1.0] * len(completions)

    fn = checked_reward("picky", picky)
    assert fn(["p", "p"], ["ok", "fine"], ["a", "a"]) == [1.0, 1.0]
    with pytest.raises(RewardError, match=r"raised KeyError: 'bad' on completion 1 of 2: 'x\+bad"):
        fn(["p", "p"], ["ok", "x+bad" * 50], ["a", "b"])
    batch_only = checked_reward("b", lambda p, c, a: [1.0] if len(c) == 1 else 1 / 0)
    with pytest.raises(RewardError, match="ZeroDivisionError.* a batch of 2 completions"):
        batch_only(["p", "p"], ["a", "b"], ["a", "b"])
    numpy_like = checked_reward("t", lambda p, c, a: torch.tensor([0.5, 1]))
    assert numpy_like(["p", "p"], ["a", "b"], ["a", "b"]) == [0.5, 1.0]


# ----------------------------------------------------------------------------- rollout files


@pytest.fixture(scope="module")
def rollout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sound rollout file of the tiny addition task (random model, rewards)."""
    out = tmp_path_factory.mktemp("rollouts") / "step-000.safetensors"
    args = ["generate", "--out", str(out), "--split", "train", "--n-prompts", "4"]
    tiny = ["--group-size", "4", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2"]
    assert rollout_main([*args, *tiny, "--max-new-tokens", "3"]) == 0
    return out


def _edit_header(good: Path, bad: Path, **changes: object) -> None:
    """``good`` with its JSON header changed, written to ``bad``."""
    with safe_open(good, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        header = json.loads(handle.metadata()["jackpot.rollouts"])
    for key, value in changes.items():
        if key == "source":
            header["metadata"]["source"] = value
        else:
            header[key] = value
    save_file(tensors, bad, metadata={"jackpot.rollouts": json.dumps(header)})


ROLLOUT_CASES: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "truncated": (
        lambda good, bad: bad.write_bytes(good.read_bytes()[:-100]),
        "{path}: file: expected a readable safetensors file",
    ),
    "random_bytes": (
        lambda good, bad: bad.write_bytes(bytes(range(256)) * 16),
        "{path}: file: expected a readable safetensors file",
    ),
    "another_schema_version": (
        lambda good, bad: _edit_header(good, bad, schema_version=2),
        "{path}: schema_version: expected 1, found 2",
    ),
    "another_task": (
        lambda good, bad: _edit_header(good, bad, source="synthetic:sort:train"),
        "rollout file '{path}' was generated from source='synthetic:sort:train'",
    ),
    "another_vocabulary": (
        lambda good, bad: _edit_header(good, bad, vocab_size=999),
        "rollout file '{path}' has vocab_size=999 but the policy scores 51 tokens",
    ),
}


@pytest.mark.parametrize("case", list(ROLLOUT_CASES), ids=list(ROLLOUT_CASES))
def test_bad_rollout_files_are_refused(
    case: str, tmp_path: Path, rollout_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, needle = ROLLOUT_CASES[case]
    files = tmp_path / "rollouts"
    files.mkdir()
    bad = files / "step-000.safetensors"
    make(rollout_file, bad)
    argv = [
        "--config",
        str(DEFAULT_CONFIG),
        *tiny_overrides(tmp_path / "run", tmp_path / "cache", steps=1),
        "warmstart.steps=0",
        "warmstart.policy_steps=0",
        f"rollout.files={files}",
        "algo.train_rollout=false",
        "sampler.topk=4",
        "trainer.eval_every=0",
    ]
    line = refused(capsys, argv)
    assert needle.format(path=bad) in line, line
    assert not (tmp_path / "run").exists()
    shutil.copy(rollout_file, bad)
    assert main(argv) == 0


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step run of the tiny config on a data file (checkpoint step-000001.ckpt)."""
    root = tmp_path_factory.mktemp("finished")
    _jsonl(root / "data.jsonl", GOOD_RECORDS)
    assert main(_base(root)) == 0
    return root


def _not_jackpot(path: Path) -> None:
    torch.save({"state_dict": {}, "epoch": 0}, path)


@dataclass
class CheckpointCase:
    """A bad checkpoint to resume from: how to spoil it, the overrides, the refusal's words."""

    spoil: Callable[[Path], object]
    needle: str
    overrides: list[str] = field(default_factory=list)
    corrupt: bool = False
    """Unreadable: resuming warns that it skips it (pytest makes warnings errors)."""


CHECKPOINT_CASES = {
    "truncated": CheckpointCase(
        lambda p: p.write_bytes(p.read_bytes()[:1000]),
        "run.resume=true but no checkpoint in '{dir}' loads; delete the broken",
        corrupt=True,
    ),
    "random_bytes": CheckpointCase(
        lambda p: p.write_bytes(b"\x80\x02garbage" * 100),
        "run.resume=true but no checkpoint in '{dir}' loads",
        corrupt=True,
    ),
    "not_written_by_jackpot": CheckpointCase(
        _not_jackpot, "checkpoint '{path}' was not written by jackpot"
    ),
    "another_model_config": CheckpointCase(
        lambda p: None, "checkpoint '{path}' holds other models: ", ["policy.hidden_size=16"]
    ),
    "another_algorithm": CheckpointCase(
        lambda p: None,
        "checkpoint '{path}' trained 2 model(s) but this run trains 1",
        ["algo.train_rollout=false"],
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES), ids=list(CHECKPOINT_CASES))
def test_bad_checkpoints_are_refused_on_resume(
    case: str, tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = CHECKPOINT_CASES[case]
    shutil.copytree(finished_run / "run", tmp_path / "run")
    shutil.copy(finished_run / "data.jsonl", tmp_path / "data.jsonl")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt = ckpt_dir / "step-000001.ckpt"
    good = ckpt.read_bytes()
    c.spoil(ckpt)
    argv = [*_base(tmp_path, steps=2), "--resume"]
    with pytest.warns(UserWarning, match="corrupt") if c.corrupt else contextlib.nullcontext():
        line = refused(capsys, [*argv, *c.overrides])
    assert c.needle.format(dir=ckpt_dir, path=ckpt) in line, line
    ckpt.write_bytes(good)
    assert main(argv) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [0.0, 1.0]


def test_a_damaged_warm_start_cache_is_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache is ours, written atomically; a damaged entry is trained again, not refused."""
    from jackpot.models import ModelSpec
    from jackpot.tasks.synthetic import TaskSpec
    from jackpot.tasks.tokenizer import CharTokenizer
    from jackpot.warmstart import SFTConfig, warm_start

    tokenizer = CharTokenizer()
    spec = ModelSpec(vocab_size=tokenizer.vocab_size, hidden_size=8, num_layers=1, num_heads=2)
    task = TaskSpec(name="addition", n_train=20, n_eval=4, max_digits=1)
    first = warm_start(spec, task, tokenizer, SFTConfig(steps=2, batch_size=4), tmp_path)
    first.path.write_bytes(first.path.read_bytes()[:100])
    capsys.readouterr()
    again = warm_start(spec, task, tokenizer, SFTConfig(steps=2, batch_size=4), tmp_path)
    assert not again.from_cache
    assert (
        f"warm start: cached {first.path} does not load (SafetensorError" in capsys.readouterr().err
    )
    assert warm_start(spec, task, tokenizer, SFTConfig(steps=2, batch_size=4), tmp_path).from_cache


# ----------------------------------------------------------------------------- debug


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_then_the_line(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data.jsonl").write_text("")
    argv = _base(tmp_path)
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("JACKPOT_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "DatasetFormatError" in err
    assert err.rstrip().splitlines()[-1].startswith(f"{PROG}: error: ")


def test_a_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_bytes(b"\x00\x01\xff" * 100)
    out = subprocess.run(
        [sys.executable, "-m", "jackpot.fit", *_base(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"{PROG}: error: {tmp_path / 'data.jsonl'} is not UTF-8 text; a .jsonl file holds one "
        "JSON object per line"
    ]
    assert not (tmp_path / "run").exists()


def test_an_attention_kernel_that_cannot_load_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown or uninstalled kernel names the key; an installed one trains the run."""
    _jsonl(tmp_path / "data.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}] * 6)
    dirs = {k: _model_dir(tmp_path / k) for k in ("policy", "rollout_model")}
    argv = [*_base(tmp_path), *(f"{k}.path={d}" for k, d in dirs.items()), "sampler.topk=4"]
    line = refused(capsys, [*argv, "rollout_model.attn_implementation=nope"])
    assert "rollout_model.attn_implementation: " in line and "nope" in line, line
    assert not (tmp_path / "run").exists()
    assert main([*argv, "policy.attn_implementation=eager"]) == 0, capsys.readouterr().err[-2000:]
