"""Run configuration: dataclass schemas (one docstring per field), loading and validation.

Configs are data: YAML merged onto these structured schemas by omegaconf, dotted overrides
from the command line, no resolvers that execute code. Every check names the key, the value
and what is allowed, and raises :class:`ConfigError`; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jackpot.interval import Interval

if TYPE_CHECKING:
    from jackpot.models import ModelSpec
    from jackpot.samplers.base import Sampler

__all__ = [
    "AlgoConfig",
    "ConfigError",
    "JackpotConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplerConfig",
    "TaskConfig",
    "TrainerConfig",
    "VLLMConfig",
    "WarmstartConfig",
    "load_config",
    "to_yaml",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


def rng(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool | None = None
) -> dict[str, Any]:
    """Field metadata: the value lies in this interval (None, an unset key, always passes)."""
    return {"range": Interval(low, high, low_open, high_open)}


def one_of(*choices: str) -> dict[str, Any]:
    """Field metadata: the value is one of ``choices``."""
    return {"choices": choices}


@dataclass
class ModelConfig:
    """A tiny model built from a transformers config, or a local checkpoint (``path``)."""

    family: str = field(default="qwen2", metadata=one_of("qwen2", "llama"))
    """Architecture of a tiny model: ``qwen2`` or ``llama``."""
    hidden_size: int = field(default=64, metadata=rng(1))
    """Width of a tiny model."""
    num_layers: int = field(default=2, metadata=rng(1))
    """Depth of a tiny model."""
    num_heads: int = field(default=4, metadata=rng(1))
    """Attention heads of a tiny model (must divide ``hidden_size``)."""
    intermediate_size: int | None = None
    """MLP width; None = 4 x hidden_size."""
    path: str | None = None
    """Local directory of a transformers checkpoint; when set, the tiny-model fields are ignored."""
    seed: int = 0
    """Seed of the random initialisation of a tiny model."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (transformers' activation checkpointing): less memory
    for about one more forward pass per update."""
    attn_implementation: str | None = None
    """The model's attention kernel, as transformers names it (``sdpa``, ``eager``,
    ``flash_attention_2``, ``flex_attention``, ...); None = transformers' default (``sdpa``).
    Scoring, training and decoding all run through it."""

    def spec(self, vocab_size: int) -> ModelSpec:
        """The :class:`~jackpot.models.ModelSpec` of the tiny model, for ``vocab_size`` tokens."""
        from jackpot.models import ModelSpec

        return ModelSpec(
            vocab_size=vocab_size,
            family=self.family,  # type: ignore[arg-type]
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            seed=self.seed,
        )


@dataclass
class TaskConfig:
    """Where prompts, reference answers and rewards come from."""

    name: str = field(
        default="addition", metadata=one_of("addition", "sort", "count", "jsonl", "parquet")
    )
    """Synthetic task (``addition``, ``sort``, ``count``), or ``jsonl`` / ``parquet`` files."""
    path: str | None = None
    """Local data file for ``jsonl`` / ``parquet`` tasks."""
    prompt_field: str = "prompt"
    """Field holding the prompt in a local data file."""
    answer_field: str = "answer"
    """Field holding the reference answer in a local data file."""
    num_train: int = field(default=2000, metadata=rng(1))
    """Synthetic training prompts."""
    num_eval: int = field(default=64, metadata=rng(1))
    """Synthetic held-out prompts (disjoint from training)."""
    digits: int = field(default=2, metadata=rng(1, 12))
    """Size of a synthetic problem: digits per operand (addition), string length (sort, count)."""
    seed: int = 0
    """Seed of the synthetic task generator."""
    reward: str = "exact_match"
    """Reward function registered under the entry-point group ``jackpot.rewards``."""

    def spec(self) -> Any:
        """The :class:`~jackpot.tasks.synthetic.TaskSpec` of a synthetic task."""
        from jackpot.tasks.synthetic import TaskSpec

        size = (
            {"max_digits": self.digits} if self.name == "addition" else {"max_length": self.digits}
        )
        return TaskSpec(
            name=self.name, n_train=self.num_train, n_eval=self.num_eval, seed=self.seed, **size
        )


@dataclass
class WarmstartConfig:
    """Short supervised fine-tuning so tiny models start with non-zero reward (cached)."""

    steps: int = field(default=300, metadata=rng(0))
    """SFT steps per model; 0 disables the warm start."""
    policy_steps: int | None = field(default=None, metadata=rng(0))
    """SFT steps of the policy; None = ``steps``. Fewer steps leave the policy more to learn."""
    lr: float = field(default=3e-3, metadata=rng(0, low_open=True))
    """SFT learning rate."""
    batch_size: int = field(default=64, metadata=rng(1))
    """SFT batch size."""
    cache_dir: str | None = None
    """Cache of warm-started weights; None = ``~/.cache/jackpot/warmstart``."""


@dataclass
class VLLMConfig:
    """vLLM engine options (``rollout.engine=vllm``); passed to ``vllm.LLM`` as named."""

    gpu_memory_utilization: float = field(default=0.3, metadata=rng(0, 1, low_open=True))
    """Fraction of each GPU's memory vLLM may take (weights + KV cache), in (0, 1]; leave room
    for the policy and its optimiser when they share the GPU. On a CPU it sizes the KV cache in
    RAM minus what this process already uses: prefer ``kv_cache_memory_gib`` there."""
    kv_cache_memory_gib: float | None = field(default=None, metadata=rng(0, low_open=True))
    """KV-cache size per device in GiB, overriding ``gpu_memory_utilization``'s sizing (0.1 is
    plenty for tiny models on a CPU); None = derive it from ``gpu_memory_utilization``."""
    max_model_len: int | None = field(default=None, metadata=rng(1))
    """Longest prompt + response vLLM accepts (bounds the KV cache); None = the model's
    ``max_position_embeddings``."""
    tensor_parallel_size: int = field(default=1, metadata=rng(1))
    """GPUs one engine shards each model over."""
    dtype: str = field(default="float32", metadata=one_of("float32", "bfloat16", "float16", "auto"))
    """Weights and activations in vLLM: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (vLLM's
    choice: half precision for a float32 checkpoint). ``p_inf`` is recorded in whatever the
    engine computes; match the trainer's precision to keep the policy-rollout gap small."""
    enforce_eager: bool = False
    """Skip CUDA-graph capture and compilation: faster start-up, slower decoding (set true on
    a CPU and in tests)."""


@dataclass
class RolloutConfig:
    """How rollouts are generated; these settings define ``p_inf``."""

    prompts_per_step: int = field(default=16, metadata=rng(1))
    """Prompts per RL step (per process)."""
    group_size: int = field(default=4, metadata=rng(1))
    """Responses per prompt (GRPO group size G)."""
    temperature: float = field(default=1.0, metadata=rng(0, low_open=True))
    """Sampling temperature (> 0); policy and rollout log-probs are scored at it too."""
    top_p: float = field(default=1.0, metadata=rng(0, 1, low_open=True))
    """Nucleus truncation of the sampling distribution, in (0, 1]."""
    top_k: int = field(default=0, metadata=rng(0))
    """Top-k truncation of the sampling distribution; 0 = off."""
    max_new_tokens: int = field(default=8, metadata=rng(1))
    """Length limit of a response."""
    logprobs_k: int = field(default=8, metadata=rng(1))
    """Top log-probs of ``p_inf`` recorded per position (feeds the top-k Z of OBRS)."""
    generation_batch_size: int | None = field(default=None, metadata=rng(1))
    """Most sequences the engine decodes at once; a step's prompts are rolled out in chunks of
    whole groups (KV-cache memory scales with this, not with the step). None = all at once."""
    files: str | None = None
    """Offline decoupled training: a directory (its ``*.safetensors``) or glob of rollout files
    (``jackpot.rollout.io`` format); RL step s trains on file ``s mod n`` in sorted path order,
    cycling when ``trainer.max_steps`` exceeds the ``n`` files. Nothing is generated and the
    rollout model is not built; needs ``algo.mode=decoupled``, ``algo.train_rollout=false``, a
    sampler without full p_inf logits (``obrs`` with ``sampler.topk`` <= the files' k) and
    ``temperature`` equal to the files'; the other ``rollout.*`` keys then only shape
    evaluation. None = generate with the rollout model."""
    allow_task_mismatch: bool = False
    """Train on rollout files whose recorded ``source`` is not this run's task and train split
    (e.g. ``synthetic:addition:train`` for a ``sort`` run); refused by default, since the
    rewards then score other prompts than the ones the run evaluates."""
    engine: str = field(default="hf", metadata=one_of("hf", "vllm"))
    """Who samples: ``hf`` (jackpot's transformers decode loop: tiny models, CPU) or ``vllm``
    (``pip install jackpot[vllm]``: real models on GPUs); both record the same ``p_inf``."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Options of the vLLM engine; ignored when ``engine=hf``."""
    max_staleness: int = field(default=0, metadata=rng(0))
    """Asynchronous rollouts: a worker process samples the rollouts of step ``s`` from the
    weights after update ``s - k`` while the trainer updates on earlier steps (rollout and
    update overlap; the sampler corrects the ``k`` steps of lag). 0 = synchronous, no worker."""
    num_threads: int | None = field(default=None, metadata=rng(1))
    """torch CPU threads of the rollout worker (``max_staleness`` >= 1), beside the trainer's
    ``trainer.num_threads``; None = ``trainer.num_threads`` (torch's default when unset)."""
    devices: list[int] | None = None
    """The GPU the rollout worker samples on (``max_staleness`` >= 1 with a GPU trainer), as a
    one-element list of a CUDA index, e.g. ``[1]``; None = the worker runs on the CPU."""
    worker_timeout_s: float = field(default=600.0, metadata=rng(0, low_open=True))
    """Longest the trainer waits for one batch or weight hand-over of the rollout worker before
    it stops the run (a hung worker); a dead worker stops it at once."""


@dataclass
class SamplerConfig:
    """Which sampler corrects the mismatch: its ``name`` and the keyword parameters of its
    constructor, written beside it (``sampler: {name: obrs, budget: 0.9}``, ``sampler.lam=1.5``).

    The constructor checks them (names, ranges, combinations; see each sampler's docstring); a
    parameter left out or null takes the constructor's default. ``cfg.sampler.budget`` reads one.
    """

    name: str = "none"
    """Sampler registered under ``jackpot.samplers`` (none, is, tis, icepop, rs, obrs, ...)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its parameters (in YAML and on the command line they sit beside ``name``)."""

    def __post_init__(self) -> None:
        """Numbers that YAML leaves as text (``1e-3``, ``inf``, ``nan``) become floats, as the
        float-typed keys of other sections read them."""
        self.params = {k: _number(v) for k, v in self.params.items()}

    def kwargs(self) -> dict[str, Any]:
        """Parameters to pass to the sampler: every one that is set (not null)."""
        return {k: v for k, v in self.params.items() if v is not None}

    def build(self) -> Sampler:
        """The sampler this section describes (its constructor checks the parameters)."""
        from jackpot.samplers import get_sampler

        return get_sampler(self.name, **self.kwargs())

    def __getattr__(self, key: str) -> Any:
        """``cfg.sampler.budget``: an installed sampler's parameter, None when not set."""
        if key.startswith("_") or key not in _sampler_parameter_names():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return self.params.get(key)


def _number(value: Any) -> Any:
    """``value`` as a float if it is text that spells one, else unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _sampler_parameter_names() -> set[str]:
    """Every parameter some installed sampler takes (the ``sampler.*`` keys there are)."""
    from jackpot.samplers.registry import available_samplers, sampler_parameters

    return {p for name in available_samplers() for p in sampler_parameters(name)}


@dataclass
class AlgoConfig:
    """The RL algorithm: who rolls out, advantages, PPO, rollout-model training."""

    mode: str = field(default="decoupled", metadata=one_of("decoupled", "on_policy"))
    """``decoupled`` (the rollout model rolls out) or ``on_policy`` (the policy does)."""
    advantage: str = field(default="grpo", metadata=one_of("grpo", "drgrpo", "rloo"))
    """Group advantage: ``grpo``, ``drgrpo`` or ``rloo``."""
    ppo_epochs: int = field(default=1, metadata=rng(1))
    """Passes over each step's rollouts."""
    minibatches: int = field(default=2, metadata=rng(1))
    """Optimiser steps per epoch (the rollouts are split into this many minibatches)."""
    policy_loss: str = field(
        default="ppo", metadata=one_of("ppo", "dual_clip", "gspo", "cispo", "gmpo", "reinforce")
    )
    """Policy loss of both models: ``ppo`` (clipped ratio), ``dual_clip`` (PPO floored at
    ``clip_ratio_c x A`` for A < 0; verl's ``vanilla``), ``gspo`` (sequence ratio), ``cispo``
    (clipped, stop-gradient IS weight on ``A log p``), ``gmpo`` (geometric mean of the token
    ratios) or ``reinforce`` (``A log p``, weights applied); see docs/math.md."""
    clip_eps: float = field(default=0.2, metadata=rng(0, 1, low_open=True, high_open=True))
    """Clip range (the lower one when ``clip_eps_high`` is set): the ratio is clipped to
    ``[1 - clip_eps, 1 + clip_eps_high]``; for ``gmpo`` the log-ratio to ``[-clip_eps,
    clip_eps_high]``."""
    clip_eps_high: float | None = field(default=None, metadata=rng(0, low_open=True))
    """Upper clip range (DAPO's clip-higher, verl's ``clip_ratio_high``); None = ``clip_eps``."""
    clip_ratio_c: float = field(default=3.0, metadata=rng(1, low_open=True))
    """``dual_clip``: the ratio bound ``c > 1`` of negative-advantage tokens (verl's default 3)."""
    clip: bool = True
    """False = the paper's no-clip ablation (plain ratio objective; ``policy_loss=ppo`` only)."""
    bypass_old_logprobs: bool = False
    """Use the rollout engine's log-probs ``p_inf`` as the old policy of the ratio (verl's bypass
    mode) instead of ``p_ref`` / ``p_w_old``; samplers still see ``p_ref``."""
    agg: str = field(
        default="token-mean",
        metadata=one_of(
            "token-mean",
            "token-sum",
            "seq-mean-token-mean",
            "seq-mean-token-sum",
            "seq-mean-token-sum-norm",
        ),
    )
    """Loss aggregation: ``token-mean``, ``token-sum``, ``seq-mean-token-mean``,
    ``seq-mean-token-sum`` or ``seq-mean-token-sum-norm`` (see docs/losses.md)."""
    train_rollout: bool = True
    """Train the rollout model (RL + distillation) on the same trajectories."""
    rollout_rl: bool = True
    """With ``train_rollout``: give the rollout model its own PPO loss besides the distillation.
    False = distillation towards the policy alone (the paper's "TIS + Reverse KL" and "Only
    Reverse KL" baselines)."""
    rollout_tis_cap: float = field(default=2.0, metadata=rng(0, low_open=True))
    """Truncation of p_w_old/p_inf in the rollout model's PPO loss."""
    distill_coef: float = field(default=0.5, metadata=rng(0))
    """beta_dist, weight of KL(SG(p_new) || p_w) in the joint loss."""
    distill_direction: str = field(default="forward", metadata=one_of("forward", "reverse"))
    """``forward`` KL(SG(p_new) || p_w) or ``reverse`` KL(p_w || SG(p_new))."""
    distill_target_kl: float | None = field(default=None, metadata=rng(0, low_open=True))
    """When set, a controller adapts ``distill_coef`` to hold this mismatch KL (k3, nats)."""
    distill_coef_bounds: tuple[float, float] = (0.01, 10.0)
    """Range the controller keeps ``distill_coef`` in."""
    max_nonfinite_skips: int = field(default=3, metadata=rng(1))
    """Consecutive skipped (non-finite) updates after which the run stops with a checkpoint."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, for one model."""

    lr: float = field(default=1e-4, metadata=rng(0, low_open=True))
    """Peak learning rate."""
    weight_decay: float = field(default=0.0, metadata=rng(0))
    """AdamW weight decay."""
    warmup_steps: int = field(default=0, metadata=rng(0))
    """Optimiser steps of linear warm-up."""
    grad_clip: float = field(default=1.0, metadata=rng(0, low_open=True))
    """Gradient-norm clip (> 0)."""


@dataclass
class TrainerConfig:
    """Lightning Trainer settings."""

    max_steps: int = field(default=40, metadata=rng(1))
    """RL steps (one rollout + updates each)."""
    accelerator: str = field(default="cpu", metadata=one_of("cpu", "gpu", "cuda", "auto"))
    """``cpu``, ``gpu``/``cuda`` or ``auto``."""
    devices: int = field(default=1, metadata=rng(1))
    """Processes/devices per node."""
    num_nodes: int = field(default=1, metadata=rng(1))
    """Nodes (machines); a run has ``num_nodes x devices`` processes (launched by torchrun or
    SLURM on each node)."""
    strategy: str = "auto"
    """``auto``, ``ddp`` (and Lightning's ddp variants), ``fsdp`` (FSDP2: both models sharded
    layer by layer, CPU or GPU), ``deepspeed`` (GPU, one optimiser)."""
    precision: str = field(
        default="32-true", metadata=one_of("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed")
    )
    """``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed``."""
    checkpoint_every: int = field(default=10, metadata=rng(1))
    """RL steps between checkpoints."""
    keep_checkpoints: int = field(default=2, metadata=rng(1))
    """Checkpoints kept (older ones are deleted after a new one is written)."""
    eval_every: int = field(default=10, metadata=rng(0))
    """RL steps between evaluations of the policy on the held-out split; 0 = never."""
    eval_samples: int = field(default=4, metadata=rng(1))
    """k of mean@k / pass@k."""
    num_threads: int | None = field(default=None, metadata=rng(1))
    """torch CPU threads; None = torch's default."""
    micro_batch_size: int | None = field(default=None, metadata=rng(1))
    """Sequences per forward pass, for scoring and for the updates (a minibatch is then several
    micro-batches with gradient accumulation; the gradient equals the unsplit one). Bounds the
    memory of a step: logits exist for one micro-batch at a time. None = chosen every step from
    ``micro_batch_tokens`` and ``micro_batch_logits_gb`` (the memory then stays flat as the
    batch grows)."""
    micro_batch_tokens: int = field(default=16384, metadata=rng(1))
    """Automatic micro-batches: at most this many (padded) tokens per forward pass, which
    bounds the activations (verl's default ``ppo_max_token_len_per_gpu``)."""
    micro_batch_logits_gb: float = field(default=0.25, metadata=rng(0, low_open=True))
    """Automatic micro-batches: at most this many GB of fp32 response logits per forward pass
    (sequences x response tokens x vocabulary x 4 bytes; 12 sequences of 32 tokens at a
    152k vocabulary). The pass's log-softmax and gradient hold a few copies of them."""
    remove_padding: bool = True
    """Score and train over the real tokens only: the model's forward runs on sequences packed
    several to a row (``position_ids`` restarting per sequence, which transformers turns into
    block-causal masks or flash-attention's varlen path), its output layer only where a
    response token is predicted; the same values as the padded forward. A model whose forward
    fails a packing probe at its first pass keeps the padded forward, with a warning."""
    max_full_logits_gb: float = field(default=4.0, metadata=rng(0, low_open=True))
    """Largest size of the full ``(N, T, V)`` fp32 logits that full-logit samplers (exact-Z
    ``obrs``, ``rs``) keep across a step; a bigger config is refused at load."""


@dataclass
class RunConfig:
    """Where and how a run is recorded."""

    dir: str = "runs/default"
    """Output directory: metrics.csv, the plot, checkpoints, the resolved config."""
    seed: int = 0
    """Seed of every random draw (rollouts, acceptance, prompt order)."""
    resume: bool = False
    """Continue from the newest valid checkpoint in ``dir``."""
    logger: str = field(default="csv", metadata=one_of("csv", "tensorboard"))
    """``csv`` or ``tensorboard`` (in addition to csv)."""
    plot: bool = True
    """Write ``plot.png`` (reward, mismatch KL, acceptance) at the end."""


@dataclass
class JackpotConfig:
    """A whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    policy: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=128, num_layers=4))
    rollout_model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    policy_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    rollout_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# ----------------------------------------------------------------------------- validation

_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
_FSDP_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true")
"""fp16 would need a gradient scaler over the sharded gradients, which FSDP2 does not bring."""


def validate(
    cfg: JackpotConfig, check_devices: bool = True, check_paths: bool = True
) -> JackpotConfig:
    """Check every field of ``cfg``; raise :class:`ConfigError` naming the first bad key.

    ``check_devices=False`` skips the comparison with this machine's devices and
    ``check_paths=False`` the model, data and rollout-file paths (to validate or print a GPU
    cluster's config on a laptop); a run checks both when it starts.
    """
    _check_fields(cfg)
    _validate_relations(cfg)
    if check_paths:
        check_paths_exist(cfg)
    if check_devices:
        _validate_devices(cfg.trainer)
        _validate_rollout_devices(cfg.rollout)
    return cfg


def _check_fields(section: Any, prefix: str = "") -> None:
    """Each field's ``one_of`` choices and ``rng`` range (its metadata), section by section."""
    for f in fields(section):
        key, value = prefix + f.name, getattr(section, f.name)
        if is_dataclass(value):
            _check_fields(value, f"{key}.")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            allowed = list(f.metadata["choices"])
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {allowed}")
        elif "range" in f.metadata and value is not None and value not in f.metadata["range"]:
            interval = f.metadata["range"]
            raise ConfigError(f"{key}={value!r} is out of range; allowed {key} in {interval}")


def _validate_relations(cfg: JackpotConfig) -> None:
    """Checks that involve more than one key, or the environment."""
    _validate_sampler(cfg)
    _validate_strategy(cfg)
    for key in ("policy", "rollout_model"):
        model: ModelConfig = getattr(cfg, key)
        if model.path is None and model.hidden_size % model.num_heads:
            raise ConfigError(
                f"{key}.num_heads={model.num_heads} must divide "
                f"{key}.hidden_size={model.hidden_size}"
            )
    if cfg.task.name in ("jsonl", "parquet"):
        if cfg.task.path is None:
            raise ConfigError(f"task.path=None; task.name={cfg.task.name!r} needs a local file")
    else:
        _validate_task_size(cfg.task)
    _validate_reward(cfg.task.reward)
    topk = cfg.sampler.topk
    if cfg.rollout.files is None and cfg.rollout.logprobs_k < (topk or 1):
        raise ConfigError(
            f"sampler.topk={topk} needs rollout.logprobs_k >= {topk}, got "
            f"{cfg.rollout.logprobs_k} (the rollout must record that many p_inf log-probs)"
        )
    if not cfg.algo.clip and cfg.algo.policy_loss != "ppo":
        raise ConfigError(
            f"algo.clip=false is not allowed with algo.policy_loss={cfg.algo.policy_loss!r}; "
            "the no-clip ablation is for algo.policy_loss='ppo'"
        )
    low, high = cfg.algo.distill_coef_bounds
    if not 0 < low <= high:
        raise ConfigError(f"algo.distill_coef_bounds={[low, high]} must satisfy 0 < low <= high")
    _validate_rollout_files(cfg)
    _validate_async(cfg)
    if cfg.rollout.engine == "vllm" and cfg.trainer.devices != 1:
        raise ConfigError(
            f"rollout.engine='vllm' is not allowed with trainer.devices={cfg.trainer.devices}; "
            "allowed: trainer.devices=1 (one in-process engine per model; vLLM inside several "
            "training processes is not supported yet), or rollout.engine='hf'"
        )


def _validate_strategy(cfg: JackpotConfig) -> None:
    """Only strategies that run this module: FSDP2 as ``fsdp`` (CPU and GPU), the ddp family,
    and DeepSpeed on GPUs with one optimiser (Lightning's DeepSpeed strategy takes one)."""
    t = cfg.trainer
    strategy = t.strategy
    if strategy.startswith("fsdp") and strategy != "fsdp":
        raise ConfigError(
            f"trainer.strategy={strategy!r} (FSDP1) is not allowed; trainer.strategy=fsdp is "
            "FSDP2 (fully_shard) on CPU and GPU, or choose ddp"
        )
    if strategy not in _STRATEGIES and not strategy.startswith(("ddp", "deepspeed")):
        raise ConfigError(
            f"trainer.strategy={strategy!r} is not allowed; choose one of {list(_STRATEGIES)}"
        )
    if strategy.startswith("deepspeed") and t.accelerator not in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.strategy={strategy!r} needs trainer.accelerator='gpu', got "
            f"{t.accelerator!r}; on CPU choose trainer.strategy=fsdp or ddp"
        )
    if strategy.startswith("deepspeed") and cfg.algo.train_rollout and cfg.algo.mode == "decoupled":
        raise ConfigError(
            f"trainer.strategy={strategy!r} takes one optimiser and algo.train_rollout=true "
            "trains two; choose trainer.strategy=fsdp"
        )
    if strategy == "fsdp" and t.precision not in _FSDP_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={t.precision!r} is not allowed with trainer.strategy=fsdp; "
            f"choose one of {list(_FSDP_PRECISIONS)}"
        )
    if strategy == "fsdp" and cfg.rollout.files is not None:
        raise ConfigError(
            "rollout.files is not allowed with trainer.strategy=fsdp (ranks' shares of a file "
            "may differ in size, and sharded forwards must run in step); choose ddp"
        )


def _validate_async(cfg: JackpotConfig) -> None:
    """Asynchronous rollouts (``rollout.max_staleness`` >= 1) run one worker beside one
    training process, generating with an engine of their own; refuse what that excludes."""
    r, t, k = cfg.rollout, cfg.trainer, cfg.rollout.max_staleness
    if not k:
        return
    key = f"rollout.max_staleness={k}"
    world = t.devices * t.num_nodes
    if world > 1:
        raise ConfigError(
            f"{key} is not allowed with {world} training processes (trainer.devices="
            f"{t.devices}, trainer.num_nodes={t.num_nodes}); allowed: one process "
            "(trainer.devices=1, trainer.num_nodes=1), or rollout.max_staleness=0"
        )
    if t.strategy not in ("auto", "ddp"):
        raise ConfigError(
            f"trainer.strategy={t.strategy!r} is not allowed with {key}; choose one of "
            "['auto', 'ddp'] (the worker copies unsharded weights), or rollout.max_staleness=0"
        )
    if r.files is not None:
        raise ConfigError(
            f"rollout.files={r.files!r} is not allowed with {key}: nothing is generated; "
            "set rollout.max_staleness=0"
        )
    if r.engine == "vllm" and r.vllm.tensor_parallel_size != 1:
        raise ConfigError(
            f"rollout.vllm.tensor_parallel_size={r.vllm.tensor_parallel_size} is not allowed "
            f"with {key}; allowed: 1 (the worker runs one engine on one device)"
        )
    on_gpu = t.accelerator in ("gpu", "cuda")
    if r.devices is not None and (len(r.devices) != 1 or min(r.devices) < 0):
        raise ConfigError(
            f"rollout.devices={list(r.devices)} is not allowed; give one CUDA index, e.g. [1]"
        )
    if r.devices is not None and not on_gpu:
        raise ConfigError(
            f"rollout.devices={list(r.devices)} needs trainer.accelerator='gpu', got "
            f"{t.accelerator!r}; on a CPU leave rollout.devices null"
        )
    if r.devices is None and on_gpu:
        raise ConfigError(
            f"{key} with trainer.accelerator={t.accelerator!r} needs rollout.devices, the "
            "worker's GPU (e.g. [1])"
        )
    trains = cfg.algo.mode == "decoupled" and cfg.algo.train_rollout
    if trains and "logits" in cfg.sampler.build().needs():
        raise ConfigError(
            f"sampler.name={cfg.sampler.name!r} needs the full p_inf, rescored by the trainer's "
            f"rollout model, which with {key} and algo.train_rollout=true is newer than the "
            "weights that sampled; set sampler.topk=k (obrs, the recorded top-k of p_inf), "
            "algo.train_rollout=false, or rollout.max_staleness=0"
        )


def check_paths_exist(cfg: JackpotConfig) -> None:
    """Local model directories, the data file and the rollout files' headers exist and fit."""
    for key in ("policy", "rollout_model"):
        path = getattr(cfg, key).path
        if path is not None and not Path(path).is_dir():
            raise ConfigError(f"{key}.path={path!r} does not exist (a local directory)")
    if cfg.task.name in ("jsonl", "parquet") and not Path(str(cfg.task.path)).is_file():
        raise ConfigError(f"task.path={cfg.task.path!r} must be an existing {cfg.task.name} file")
    _check_rollout_file_headers(cfg)


def _validate_rollout_files(cfg: JackpotConfig) -> None:
    """Offline training: the mode and the sampler (the files themselves: at run start)."""
    spec = cfg.rollout.files
    if spec is None:
        return

    if not spec.strip():
        raise ConfigError("rollout.files='' is empty; name a directory or glob, or null")
    if cfg.algo.mode != "decoupled":
        raise ConfigError(
            f"algo.mode={cfg.algo.mode!r} is not allowed with rollout.files={spec!r}; choose "
            "'decoupled' (the files' rollouts come from another model than the policy)"
        )
    if cfg.algo.train_rollout:
        raise ConfigError(
            f"algo.train_rollout=true is not allowed with rollout.files={spec!r}; set "
            "algo.train_rollout=false: rollouts are read from the files, so a trained rollout "
            "model would never roll out (and the model that wrote them is not loaded)"
        )
    sampler = cfg.sampler.build()
    needs = sampler.needs()
    if "logits" in needs:
        fix = (
            "set sampler.topk (at most the files' k) for the top-k Z"
            if cfg.sampler.name == "obrs"
            else "choose a sampler that needs no full logits (none, is, tis, icepop, seq_tis, "
            "geo_mask, seq_icepop, token_reject, seq_reject, or obrs with sampler.topk)"
        )
        topk = " with sampler.topk=None" if cfg.sampler.name == "obrs" else ""
        raise ConfigError(
            f"sampler.name={cfg.sampler.name!r}{topk} needs the full p_inf logits, but a "
            f"rollout file (rollout.files={spec!r}) records only the top-k of p_inf; {fix}"
        )


def _check_rollout_file_headers(cfg: JackpotConfig) -> None:
    """Every rollout file's header (not its tensors) fits the run: temperature, k, task."""
    spec = cfg.rollout.files
    if spec is None:
        return
    from jackpot.rollout.files import (
        check_rollout_file,
        check_rollout_task,
        read_infos,
        resolve_rollout_files,
    )

    try:
        files = resolve_rollout_files(spec)
    except FileNotFoundError as exc:
        raise ConfigError(f"rollout.files={spec!r}: {exc}") from None
    sampler = cfg.sampler.build()
    sampler_topk = sampler.topk_k() if "topk" in sampler.needs() else None
    for info in read_infos(files):
        check_rollout_file(info, temperature=cfg.rollout.temperature, sampler_topk=sampler_topk)
        check_rollout_task(info, cfg.task, allow_mismatch=cfg.rollout.allow_task_mismatch)


def _validate_sampler(cfg: JackpotConfig) -> None:
    """Build the sampler once, so an unknown name or parameter and a bad value fail at load
    time with the keys named (``sampler.lam=0 is out of range; ...``)."""
    from jackpot.samplers import SamplerParameterError
    from jackpot.samplers.registry import sampler_parameters

    name, given = cfg.sampler.name, cfg.sampler.kwargs()
    try:
        accepted = sampler_parameters(name)
    except ValueError as exc:
        raise ConfigError(f"sampler.name={name!r}: {exc}") from None
    for key in given:
        if key in accepted:
            continue
        if key not in _sampler_parameter_names():
            raise ConfigError(
                f"unknown config key 'sampler.{key}'{_did_you_mean('sampler.' + key)}"
            )
        raise ConfigError(
            f"sampler.{key}={given[key]!r} is not a parameter of sampler.name={name!r}; "
            f"{name!r} takes: {', '.join(accepted) or 'no parameters'}"
        )
    try:
        sampler = cfg.sampler.build()
    except SamplerParameterError as exc:
        raise ConfigError(f"sampler.name={name!r}: {exc.as_keys('sampler')}") from None
    if "logits" in sampler.needs() and cfg.algo.mode != "decoupled":
        raise ConfigError(
            f"sampler.name={cfg.sampler.name!r} needs the full p_inf of a rollout model, which "
            f"algo.mode={cfg.algo.mode!r} has none of; use algo.mode=decoupled, sampler.topk=k "
            "(obrs) or a token-level sampler"
        )
    if "logits" in sampler.needs():
        _validate_full_logits(cfg)


def _vocab_size(cfg: JackpotConfig) -> int | None:
    """The policy's vocabulary size as far as the config tells (None: a checkpoint not here)."""
    import json

    if cfg.policy.path is None:
        from jackpot.tasks.tokenizer import CharTokenizer

        return CharTokenizer().vocab_size
    config_json = Path(cfg.policy.path) / "config.json"
    if not config_json.is_file():
        return None
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: the model loader refuses it with the reason
        return None
    size = data.get("vocab_size") if isinstance(data, dict) else None
    return int(size) if isinstance(size, int) else None


def _validate_full_logits(cfg: JackpotConfig) -> None:
    """Full-logit samplers keep ``(N, T, V)`` p_ref and p_inf across a step: refuse what would
    not fit, naming the top-k alternative, instead of running out of memory mid-run."""
    vocab = _vocab_size(cfg)
    if vocab is None:
        return
    r = cfg.rollout
    n = r.prompts_per_step * r.group_size
    gb = 2 * n * r.max_new_tokens * vocab * 4 / 1e9  # logits_ref and logits_inf, fp32
    if gb > cfg.trainer.max_full_logits_gb:
        alternative = (
            "set sampler.topk=k (top-k Z with kappa, per-token memory)"
            if cfg.sampler.name == "obrs"
            else "use sampler.name=obrs with sampler.topk=k"
        )
        raise ConfigError(
            f"sampler.name={cfg.sampler.name!r} keeps the full (N, T, V) logits of p_ref and "
            f"p_inf across a step: {n} x {r.max_new_tokens} x {vocab} x 2 in fp32 = {gb:.1f} GB "
            f"> trainer.max_full_logits_gb={cfg.trainer.max_full_logits_gb:g}; {alternative}, "
            "or raise trainer.max_full_logits_gb"
        )


def _validate_task_size(task: TaskConfig) -> None:
    """A synthetic task must hold enough distinct problems for the requested splits."""
    from jackpot.tasks.synthetic import make_task

    try:
        make_task(task.spec())
    except ValueError as exc:
        raise ConfigError(f"task.num_train / task.num_eval / task.digits: {exc}") from None


def _validate_reward(name: str) -> None:
    from jackpot.tasks.rewards import available_rewards

    installed = available_rewards()
    if name not in installed:
        raise ConfigError(f"task.reward={name!r} is unknown; installed rewards: {installed}")
    if name == "math_equiv":
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:
            raise ConfigError(
                "task.reward='math_equiv' needs the math-verify package: "
                "pip install 'jackpot[math]'"
            )


def _validate_devices(trainer: TrainerConfig) -> None:
    """More devices than exist, or a strategy whose package is missing, is an error now, not
    an hour into a queue."""
    import importlib.util
    import os

    import torch

    if trainer.strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"trainer.strategy={trainer.strategy!r} needs the deepspeed package "
            "(pip install deepspeed), or choose trainer.strategy=fsdp"
        )

    if trainer.accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(f"trainer.accelerator={trainer.accelerator!r} but no GPU is visible")
    elif trainer.accelerator == "cpu":
        available = os.cpu_count() or 1
    else:
        available = max(torch.cuda.device_count(), os.cpu_count() or 1)
    if trainer.devices > available:
        raise ConfigError(
            f"trainer.devices={trainer.devices} exceeds the {available} available "
            f"{trainer.accelerator} device(s)"
        )


def _validate_rollout_devices(rollout: RolloutConfig) -> None:
    """The rollout worker's GPU exists."""
    if rollout.devices is None or not rollout.max_staleness:
        return
    import torch

    available = torch.cuda.device_count()
    if max(rollout.devices) >= available:
        allowed = f"indices 0 to {available - 1}" if available else "none: no GPU is visible"
        raise ConfigError(
            f"rollout.devices={list(rollout.devices)} names a GPU this machine does not have; "
            f"allowed: {allowed}"
        )


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    check_devices: bool = True,
    check_paths: bool = True,
) -> JackpotConfig:
    """Merge ``path`` (YAML) and dotted ``overrides`` onto the schema, then validate.

    Unknown keys (with a "did you mean"), wrong types, a missing file or invalid YAML raise
    :class:`ConfigError`. Sampler overrides follow :func:`_apply_sampler_overrides`.
    ``check_devices`` / ``check_paths``: see :func:`validate`.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(JackpotConfig)
    try:
        from_file = OmegaConf.merge(
            schema,
            *(
                OmegaConf.create(_nest_sampler(d))
                for d in (_config_layers(Path(path), ()) if path else [])
            ),
        )
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            if "${" in item:
                raise ConfigError(f"override {item!r} uses interpolation; not allowed")
        command_line = OmegaConf.from_dotlist([_nest_override(o) for o in overrides or []])
        OmegaConf.merge(schema, command_line)  # unknown keys and bad types, named as given
        given = command_line.get("sampler")
        if given is not None:
            _apply_sampler_overrides(from_file.sampler, OmegaConf.to_container(given))
        cfg = OmegaConf.to_object(OmegaConf.merge(from_file, command_line))
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    assert isinstance(cfg, JackpotConfig)
    return validate(cfg, check_devices, check_paths)


def _nest_sampler(layer: dict[str, Any]) -> dict[str, Any]:
    """A file's layer with its ``sampler`` section as the schema holds it: the parameters
    written beside ``name`` moved under ``params``."""
    section = layer.get("sampler")
    if not isinstance(section, dict):
        return layer
    name = {k: v for k, v in section.items() if k == "name"}
    params = {k: v for k, v in section.items() if k != "name"}
    return {**layer, "sampler": {**name, "params": params}}


def _nest_override(item: str) -> str:
    """``sampler.lam=1.5`` as the schema holds it, ``sampler.params.lam=1.5``; others as given."""
    key, _, value = item.partition("=")
    if key.startswith("sampler.") and key != "sampler.name":
        return f"sampler.params.{key.removeprefix('sampler.')}={value}"
    return item


def _apply_sampler_overrides(from_file: Any, given: Any) -> None:
    """Make the file's ``sampler`` section fit the command line's ``sampler.*`` keys (in place).

    A command-line ``lam`` replaces the file's ``budget`` and vice versa. A command-line
    ``name`` naming another sampler drops the file's parameters that sampler does not take
    (its constructor's keywords; one line on stderr says which), while a command-line
    parameter it does not take is an error.
    """
    import sys

    from jackpot.samplers.registry import sampler_parameters

    params = given.get("params") or {}
    for key, other in (("lam", "budget"), ("budget", "lam")):
        if params.get(key) is not None and other not in params:
            from_file.params.pop(other, None)
    name = given.get("name")
    if name is None or name == from_file.name:
        return
    try:
        accepted = set(sampler_parameters(name))
    except ValueError as exc:
        raise ConfigError(f"sampler.name={name!r}: {exc}") from None
    # a null value unsets a key, which fits any sampler
    wrong = [f"sampler.{k}" for k, v in params.items() if k not in accepted and v is not None]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} given on the command line but sampler.name={name!r} does not "
            f"take it; {name!r} takes: {', '.join(sorted(accepted)) or 'no parameters'}"
        )
    dropped = [k for k in from_file.params if k not in accepted and k not in params]
    said = [f"sampler.{k}" for k in dropped if from_file.params[k] is not None]
    for key in dropped:
        del from_file.params[key]
    if said:
        print(
            f"sampler.name={name} (command line): ignoring the config file's "
            f"{', '.join(said)} ({name!r} does not take them)",
            file=sys.stderr,
        )


def _config_layers(path: Path, seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    """The file's mapping, preceded by those of its ``base:`` chain (a path relative to it)."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} is its own base (a cycle)")
    text = path.read_text()
    if "${" in text:
        raise ConfigError(
            f"config file {str(path)!r} uses ${{...}} interpolation; configs are plain data"
        )
    data = _load_yaml(text, path)
    base = data.pop("base", None)
    if base is None:
        return [data]
    if not isinstance(base, str):
        raise ConfigError(f"base={base!r} in {str(path)!r} must be a path to another config")
    return [*_config_layers(path.parent / base, (*seen, path.resolve())), data]


def _load_yaml(text: str, path: Path) -> dict[str, Any]:
    """Parse YAML safely; a top-level non-mapping or a syntax error is a ConfigError."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def _omegaconf_message(exc: Exception) -> str:
    """One line from an omegaconf error: the key and the problem."""
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or ("Key '" in msg and "not in" in msg):
        return f"unknown config key {key!r}{_did_you_mean(key)}" if key else msg
    return f"{key}: {msg}" if key else msg


def _schema_keys(schema: Any = JackpotConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included (``sampler``, ``sampler.budget``);
    the sampler's are ``name`` and every installed sampler's parameters."""
    keys = []
    for f in fields(schema):
        key, default = prefix + f.name, getattr(schema(), f.name)
        keys.append(key)
        if isinstance(default, SamplerConfig):
            keys += [f"{key}.{p}" for p in ("name", *sorted(_sampler_parameter_names()))]
        elif is_dataclass(default):
            keys.extend(_schema_keys(type(default), f"{key}."))
    return keys


def _did_you_mean(key: str) -> str:
    """``"; did you mean 'sampler.budget'?"`` for a near miss of a schema key, else ``""``."""
    import difflib

    known = _schema_keys()
    by_leaf: dict[str, list[str]] = {}
    for k in known:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.8) or [
        k
        for leaf in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=2)
        for k in by_leaf[leaf]
    ]
    if not close:
        return ""
    return f"; did you mean {' or '.join(repr(k) for k in close[:3])}?"


def to_yaml(cfg: JackpotConfig) -> str:
    """The resolved config as YAML (written to ``run.dir`` and shown by ``--print-config``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.to_yaml(OmegaConf.create(as_dict(cfg))))


def as_dict(cfg: Any) -> Any:
    """Plain nested dict of a config dataclass (for hyper-parameter logging), the sampler's
    section as written: ``{"name": ..., **parameters}``."""
    if isinstance(cfg, SamplerConfig):
        return {"name": cfg.name, **cfg.params}
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: as_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return list(cfg)
    return cfg
