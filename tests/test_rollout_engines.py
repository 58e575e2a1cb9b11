"""Choosing the rollout engine: config keys, the factory, weight sync, vLLM as an optional extra.

The vLLM engine itself is tested in ``tests_vllm`` (``nox -s vllm``); this venv has no vLLM.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from jackpot.config import ConfigError, JackpotConfig, RolloutConfig, validate
from jackpot.models import ModelSpec, build_model
from jackpot.rollout import build_engine
from jackpot.rollout.hf import HFRolloutEngine


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A tiny random Qwen2."""
    return build_model(ModelSpec(vocab_size=12, hidden_size=32, num_layers=1, num_heads=2))


def test_the_default_engine_is_the_transformers_loop(model: torch.nn.Module, tmp_path) -> None:
    """rollout.engine=hf wraps the model itself and writes nothing to the work dir."""
    engine = build_engine(RolloutConfig(), model, pad_token_id=0, work_dir=tmp_path / "engine")
    assert isinstance(engine, HFRolloutEngine) and engine.model is model
    assert not (tmp_path / "engine").exists()


def test_vllm_sync_hands_over_whole_tensors_of_a_sharded_model(cpu_mesh: Any) -> None:
    """An FSDP2 model's DTensor shards are gathered before vLLM's reload sees them."""
    from jackpot.rollout.vllm import VLLMRolloutEngine
    from jackpot.training.sharding import shard_models

    class FakeLLM:
        def collective_rpc(self, method: str, kwargs: dict[str, Any]) -> None:
            self.weights = dict(kwargs["weights_iterator"])

        def reset_prefix_cache(self) -> None:
            pass

    sharded = build_model(ModelSpec(vocab_size=12, hidden_size=32, num_layers=1, num_heads=2))
    expected = {k: v.clone() for k, v in sharded.state_dict().items()}
    shard_models([sharded], cpu_mesh, "32-true")
    engine = object.__new__(VLLMRolloutEngine)  # no vLLM here: only its weight hand-over
    engine.llm = FakeLLM()
    engine.sync_weights(sharded)
    got = engine.llm.weights
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert type(tensor) is torch.Tensor, name
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_hf_sync_is_a_no_op_for_its_own_model_only(model: torch.nn.Module) -> None:
    """The HF engine samples from the wrapped module: syncing it is free, another is an error."""
    engine = HFRolloutEngine(model, pad_token_id=0)
    engine.sync_weights(model)
    other = build_model(ModelSpec(vocab_size=12, hidden_size=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="another model"):
        engine.sync_weights(other)


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="checks the error raised without vLLM"
)
def test_without_vllm_the_error_names_the_extra(model: torch.nn.Module, tmp_path) -> None:
    """rollout.engine=vllm without vLLM installed: an ImportError naming jackpot[vllm]."""
    with pytest.raises(ImportError, match=r"pip install jackpot\[vllm\]"):
        build_engine(RolloutConfig(engine="vllm"), model, 0, tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (
            "engine",
            "sglang",
            r"rollout.engine='sglang' is not allowed; choose one of \['hf', 'vllm'\]",
        ),
        (
            "vllm.gpu_memory_utilization",
            1.5,
            r"rollout.vllm.gpu_memory_utilization=1.5 .* \(0, 1\]",
        ),
        ("vllm.gpu_memory_utilization", 0.0, r"rollout.vllm.gpu_memory_utilization=0.0"),
        ("vllm.kv_cache_memory_gib", 0.0, r"rollout.vllm.kv_cache_memory_gib=0.0 .* \(0, inf\)"),
        ("vllm.max_model_len", 0, r"rollout.vllm.max_model_len=0 .* \[1, inf\)"),
        ("vllm.tensor_parallel_size", 0, r"rollout.vllm.tensor_parallel_size=0"),
        ("vllm.dtype", "fp8", r"rollout.vllm.dtype='fp8' is not allowed"),
    ],
)
def test_engine_options_are_validated_with_their_key(key: str, value: object, match: str) -> None:
    """Each vLLM option is range-checked; the message names the key, the value and the range."""
    cfg = JackpotConfig()
    target: object = cfg.rollout
    *parents, name = key.split(".")
    for part in parents:
        target = getattr(target, part)
    setattr(target, name, value)
    with pytest.raises(ConfigError, match=match):
        validate(cfg, check_devices=False, check_paths=False)


def test_vllm_needs_a_single_training_process() -> None:
    """One in-process engine per model: several training processes are refused for now."""
    cfg = JackpotConfig()
    cfg.rollout.engine = "vllm"
    cfg.trainer.devices = 2
    with pytest.raises(ConfigError, match=r"rollout.engine='vllm' .* trainer.devices=2; allowed"):
        validate(cfg, check_devices=False, check_paths=False)
