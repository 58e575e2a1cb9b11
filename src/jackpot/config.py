"""Run configuration: dataclass schemas (one docstring per field), loading and validation.

Configs are data: YAML merged onto these structured schemas by omegaconf, dotted overrides
from the command line, no resolvers that execute code. Every check names the key, the value
and what is allowed, and raises :class:`ConfigError`; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class ModelConfig:
    """A tiny model built from a transformers config, or a local checkpoint (``path``)."""

    family: str = "qwen2"
    """Architecture of a tiny model: ``qwen2`` or ``llama``."""
    hidden_size: int = 64
    """Width of a tiny model."""
    num_layers: int = 2
    """Depth of a tiny model."""
    num_heads: int = 4
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


@dataclass
class TaskConfig:
    """Where prompts, reference answers and rewards come from."""

    name: str = "addition"
    """Synthetic task (``addition``, ``sort``, ``count``), or ``jsonl`` / ``parquet`` files."""
    path: str | None = None
    """Local data file for ``jsonl`` / ``parquet`` tasks."""
    prompt_field: str = "prompt"
    """Field holding the prompt in a local data file."""
    answer_field: str = "answer"
    """Field holding the reference answer in a local data file."""
    num_train: int = 2000
    """Synthetic training prompts."""
    num_eval: int = 64
    """Synthetic held-out prompts (disjoint from training)."""
    digits: int = 2
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

    steps: int = 300
    """SFT steps per model; 0 disables the warm start."""
    policy_steps: int | None = None
    """SFT steps of the policy; None = ``steps``. Fewer steps leave the policy more to learn."""
    lr: float = 3e-3
    """SFT learning rate."""
    batch_size: int = 64
    """SFT batch size."""
    cache_dir: str | None = None
    """Cache of warm-started weights; None = ``~/.cache/jackpot/warmstart``."""


@dataclass
class VLLMConfig:
    """vLLM engine options (``rollout.engine=vllm``); passed to ``vllm.LLM`` as named."""

    gpu_memory_utilization: float = 0.3
    """Fraction of each GPU's memory vLLM may take (weights + KV cache), in (0, 1]; leave room
    for the policy and its optimiser when they share the GPU. On a CPU it sizes the KV cache in
    RAM minus what this process already uses: prefer ``kv_cache_memory_gib`` there."""
    kv_cache_memory_gib: float | None = None
    """KV-cache size per device in GiB, overriding ``gpu_memory_utilization``'s sizing (0.1 is
    plenty for tiny models on a CPU); None = derive it from ``gpu_memory_utilization``."""
    max_model_len: int | None = None
    """Longest prompt + response vLLM accepts (bounds the KV cache); None = the model's
    ``max_position_embeddings``."""
    tensor_parallel_size: int = 1
    """GPUs one engine shards each model over."""
    dtype: str = "float32"
    """Weights and activations in vLLM: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (vLLM's
    choice: half precision for a float32 checkpoint). ``p_inf`` is recorded in whatever the
    engine computes; match the trainer's precision to keep the policy-rollout gap small."""
    enforce_eager: bool = False
    """Skip CUDA-graph capture and compilation: faster start-up, slower decoding (set true on
    a CPU and in tests)."""


@dataclass
class RolloutConfig:
    """How rollouts are generated; these settings define ``p_inf``."""

    prompts_per_step: int = 16
    """Prompts per RL step (per process)."""
    group_size: int = 4
    """Responses per prompt (GRPO group size G)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); policy and rollout log-probs are scored at it too."""
    top_p: float = 1.0
    """Nucleus truncation of the sampling distribution, in (0, 1]."""
    top_k: int = 0
    """Top-k truncation of the sampling distribution; 0 = off."""
    max_new_tokens: int = 8
    """Length limit of a response."""
    logprobs_k: int = 8
    """Top log-probs of ``p_inf`` recorded per position (feeds the top-k Z of OBRS)."""
    generation_batch_size: int | None = None
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
    engine: str = "hf"
    """Who samples: ``hf`` (jackpot's transformers decode loop: tiny models, CPU) or ``vllm``
    (``pip install jackpot[vllm]``: real models on GPUs); both record the same ``p_inf``."""
    lean_decode: bool = True
    """``engine=hf``: decode Llama-family models (Llama, Qwen2, Qwen3) with jackpot's own
    step over the model's modules and a preallocated KV cache (the same values as the
    model's forward, a fraction of its per-token overhead); false, any other model, or a
    sharded one (``trainer.strategy=fsdp``) runs the model's forward per token."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Options of the vLLM engine; ignored when ``engine=hf``."""


@dataclass
class SamplerConfig:
    """Which sampler corrects the mismatch; None = the sampler's own default."""

    name: str = "none"
    """Sampler registered under ``jackpot.samplers`` (none, is, tis, icepop, rs, obrs, ...)."""
    lam: float | None = None
    """OBRS threshold lambda > 0 (exclusive with ``budget``)."""
    budget: float | None = None
    """OBRS target acceptance rate in (0, 1], held every step (exclusive with ``lam``)."""
    topk: int | None = None
    """OBRS: k >= 1 for the top-k Z with kappa; None = exact Z from full logits."""
    c1: float | None = None
    """OBRS truncation of the importance weight (> 0)."""
    c2: float | None = None
    """OBRS truncation of p_ref/p_target (> 0; the factor is 1 when p_target = ref)."""
    p_target: str | None = None
    """OBRS alignment target: ``ref`` (fixed per step) or ``new`` (recomputed per minibatch)."""
    aggregation: str | None = None
    """OBRS weight/denominator pairing: ``accepted`` (paper) or ``proposal``."""
    cap: float | None = None
    """Truncation C of ``tis`` / ``seq_tis``."""
    normalize: bool | None = None
    """``tis`` / ``seq_tis``: rescale the weights to mean 1 over the batch (verl's
    ``rollout_is_batch_normalize``)."""
    alpha: float | None = None
    """Lower ratio bound of ``icepop`` / ``seq_icepop`` / ``geo_mask``, and of the k1 band of
    ``token_reject`` / ``seq_reject`` (verl's k1 ``lower_upper`` is ``1/upper``, ``1/lower``)."""
    beta: float | None = None
    """Upper ratio bound of the same samplers."""
    estimator: str | None = None
    """``token_reject`` / ``seq_reject``: divergence ``k1`` (ratio band alpha/beta), ``k2`` or
    ``k3`` (upper bound ``threshold``)."""
    reduce: str | None = None
    """``seq_reject``: ``sum``, ``mean`` or ``max`` of the token divergences of a sequence."""
    threshold: float | None = None
    """``token_reject`` / ``seq_reject`` with k2 / k3: the largest divergence kept (> 0)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra keyword parameters, e.g. for a third-party sampler."""

    def kwargs(self) -> dict[str, Any]:
        """Parameters to pass to the sampler: every field that is set, plus ``params``."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("name", "params") and getattr(self, f.name) is not None
        }
        return {**out, **self.params}


@dataclass
class AlgoConfig:
    """The RL algorithm: who rolls out, advantages, PPO, rollout-model training."""

    mode: str = "decoupled"
    """``decoupled`` (the rollout model rolls out) or ``on_policy`` (the policy does)."""
    advantage: str = "grpo"
    """Group advantage: ``grpo``, ``drgrpo`` or ``rloo``."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    minibatches: int = 2
    """Optimiser steps per epoch (the rollouts are split into this many minibatches)."""
    policy_loss: str = "ppo"
    """Policy loss of both models: ``ppo`` (clipped ratio), ``dual_clip`` (PPO floored at
    ``clip_ratio_c x A`` for A < 0; verl's ``vanilla``), ``gspo`` (sequence ratio), ``cispo``
    (clipped, stop-gradient IS weight on ``A log p``), ``gmpo`` (geometric mean of the token
    ratios) or ``reinforce`` (``A log p``, weights applied); see docs/math.md."""
    clip_eps: float = 0.2
    """Clip range (the lower one when ``clip_eps_high`` is set): the ratio is clipped to
    ``[1 - clip_eps, 1 + clip_eps_high]``; for ``gmpo`` the log-ratio to ``[-clip_eps,
    clip_eps_high]``."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher, verl's ``clip_ratio_high``); None = ``clip_eps``."""
    clip_ratio_c: float = 3.0
    """``dual_clip``: the ratio bound ``c > 1`` of negative-advantage tokens (verl's default 3)."""
    clip: bool = True
    """False = the paper's no-clip ablation (plain ratio objective; ``policy_loss=ppo`` only)."""
    bypass_old_logprobs: bool = False
    """Use the rollout engine's log-probs ``p_inf`` as the old policy of the ratio (verl's bypass
    mode) instead of ``p_ref`` / ``p_w_old``; samplers still see ``p_ref``."""
    agg: str = "token-mean"
    """Loss aggregation: ``token-mean``, ``token-sum``, ``seq-mean-token-mean``,
    ``seq-mean-token-sum`` or ``seq-mean-token-sum-norm`` (see docs/losses.md)."""
    train_rollout: bool = True
    """Train the rollout model (RL + distillation) on the same trajectories."""
    rollout_rl: bool = True
    """With ``train_rollout``: give the rollout model its own PPO loss besides the distillation.
    False = distillation towards the policy alone (the paper's "TIS + Reverse KL" and "Only
    Reverse KL" baselines)."""
    rollout_tis_cap: float = 2.0
    """Truncation of p_w_old/p_inf in the rollout model's PPO loss."""
    distill_coef: float = 0.5
    """beta_dist, weight of KL(SG(p_new) || p_w) in the joint loss."""
    distill_direction: str = "forward"
    """``forward`` KL(SG(p_new) || p_w) or ``reverse`` KL(p_w || SG(p_new))."""
    distill_target_kl: float | None = None
    """When set, a controller adapts ``distill_coef`` to hold this mismatch KL (k3, nats)."""
    distill_coef_bounds: tuple[float, float] = (0.01, 10.0)
    """Range the controller keeps ``distill_coef`` in."""
    max_nonfinite_skips: int = 3
    """Consecutive skipped (non-finite) updates after which the run stops with a checkpoint."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, for one model."""

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    grad_clip: float = 1.0
    """Gradient-norm clip (> 0)."""


@dataclass
class TrainerConfig:
    """Lightning Trainer settings."""

    max_steps: int = 40
    """RL steps (one rollout + updates each)."""
    accelerator: str = "cpu"
    """``cpu``, ``gpu``/``cuda`` or ``auto``."""
    devices: int = 1
    """Processes/devices per node."""
    num_nodes: int = 1
    """Nodes (machines); a run has ``num_nodes x devices`` processes (launched by torchrun or
    SLURM on each node)."""
    strategy: str = "auto"
    """``auto``, ``ddp`` (and Lightning's ddp variants), ``fsdp`` (FSDP2: both models sharded
    layer by layer, CPU or GPU), ``deepspeed`` (GPU, one optimiser)."""
    precision: str = "32-true"
    """``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed``."""
    checkpoint_every: int = 10
    """RL steps between checkpoints."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones are deleted after a new one is written)."""
    eval_every: int = 10
    """RL steps between evaluations of the policy on the held-out split; 0 = never."""
    eval_samples: int = 4
    """k of mean@k / pass@k."""
    num_threads: int | None = None
    """torch CPU threads; None = torch's default."""
    micro_batch_size: int | None = None
    """Sequences per forward pass, for scoring and for the updates (a minibatch is then several
    micro-batches with gradient accumulation; the gradient equals the unsplit one). Bounds the
    memory of a step: logits exist for one micro-batch at a time. None = chosen every step from
    ``micro_batch_tokens`` and ``micro_batch_logits_gb`` (the memory then stays flat as the
    batch grows)."""
    micro_batch_tokens: int = 16384
    """Automatic micro-batches: at most this many (padded) tokens per forward pass, which
    bounds the activations (verl's default ``ppo_max_token_len_per_gpu``)."""
    micro_batch_logits_gb: float = 0.25
    """Automatic micro-batches: at most this many GB of fp32 response logits per forward pass
    (sequences x response tokens x vocabulary x 4 bytes; 12 sequences of 32 tokens at a
    152k vocabulary). The pass's log-softmax and gradient hold a few copies of them."""
    remove_padding: bool = True
    """Score and train Llama-family models (Llama, Qwen2, Qwen3) over their real tokens only:
    the projections and MLP skip the padding of a batch, the output layer runs only where a
    response token is predicted (the same values as the model's forward). False, FSDP2,
    DeepSpeed ZeRO-3, sliding-window attention, attention dropout or another architecture
    use the model's forward."""
    max_full_logits_gb: float = 4.0
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
    logger: str = "csv"
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

_CHOICES: dict[str, tuple[str, ...]] = {
    "policy.family": ("qwen2", "llama"),
    "rollout_model.family": ("qwen2", "llama"),
    "algo.mode": ("decoupled", "on_policy"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.vllm.dtype": ("float32", "bfloat16", "float16", "auto"),
    "algo.advantage": ("grpo", "drgrpo", "rloo"),
    "algo.policy_loss": ("ppo", "dual_clip", "gspo", "cispo", "gmpo", "reinforce"),
    "algo.agg": (
        "token-mean",
        "token-sum",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    ),
    "algo.distill_direction": ("forward", "reverse"),
    "trainer.accelerator": ("cpu", "gpu", "cuda", "auto"),
    "trainer.precision": ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"),
    "run.logger": ("csv", "tensorboard"),
}
_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
_FSDP_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true")
"""fp16 would need a gradient scaler over the sharded gradients, which FSDP2 does not bring."""

# key -> (low, high, low_open, high_open); ints and floats alike.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "policy.hidden_size": (1, math.inf, False, True),
    "policy.num_layers": (1, math.inf, False, True),
    "policy.num_heads": (1, math.inf, False, True),
    "rollout_model.hidden_size": (1, math.inf, False, True),
    "rollout_model.num_layers": (1, math.inf, False, True),
    "rollout_model.num_heads": (1, math.inf, False, True),
    "task.num_train": (1, math.inf, False, True),
    "task.num_eval": (1, math.inf, False, True),
    "task.digits": (1, 12, False, False),
    "warmstart.steps": (0, math.inf, False, True),
    "warmstart.lr": (0, math.inf, True, True),
    "warmstart.batch_size": (1, math.inf, False, True),
    "rollout.prompts_per_step": (1, math.inf, False, True),
    "rollout.group_size": (1, math.inf, False, True),
    "rollout.temperature": (0, math.inf, True, True),
    "rollout.top_p": (0, 1, True, False),
    "rollout.top_k": (0, math.inf, False, True),
    "rollout.max_new_tokens": (1, math.inf, False, True),
    "rollout.logprobs_k": (1, math.inf, False, True),
    "rollout.generation_batch_size": (1, math.inf, False, True),
    "rollout.vllm.gpu_memory_utilization": (0, 1, True, False),
    "rollout.vllm.kv_cache_memory_gib": (0, math.inf, True, True),
    "rollout.vllm.max_model_len": (1, math.inf, False, True),
    "rollout.vllm.tensor_parallel_size": (1, math.inf, False, True),
    "sampler.lam": (0, math.inf, True, True),
    "sampler.budget": (0, 1, True, False),
    "sampler.topk": (1, math.inf, False, True),
    "sampler.c1": (0, math.inf, True, False),
    "sampler.c2": (0, math.inf, True, False),
    "sampler.cap": (0, math.inf, True, True),
    "sampler.threshold": (0, math.inf, True, False),
    "algo.ppo_epochs": (1, math.inf, False, True),
    "algo.minibatches": (1, math.inf, False, True),
    "algo.clip_eps": (0, 1, True, True),
    "algo.clip_eps_high": (0, math.inf, True, True),
    "algo.clip_ratio_c": (1, math.inf, True, True),
    "algo.rollout_tis_cap": (0, math.inf, True, True),
    "algo.distill_coef": (0, math.inf, False, True),
    "algo.distill_target_kl": (0, math.inf, True, True),
    "algo.max_nonfinite_skips": (1, math.inf, False, True),
    "policy_optim.lr": (0, math.inf, True, True),
    "policy_optim.weight_decay": (0, math.inf, False, True),
    "policy_optim.warmup_steps": (0, math.inf, False, True),
    "policy_optim.grad_clip": (0, math.inf, True, True),
    "rollout_optim.lr": (0, math.inf, True, True),
    "rollout_optim.weight_decay": (0, math.inf, False, True),
    "rollout_optim.warmup_steps": (0, math.inf, False, True),
    "rollout_optim.grad_clip": (0, math.inf, True, True),
    "trainer.max_steps": (1, math.inf, False, True),
    "trainer.devices": (1, math.inf, False, True),
    "trainer.num_nodes": (1, math.inf, False, True),
    "trainer.checkpoint_every": (1, math.inf, False, True),
    "trainer.keep_checkpoints": (1, math.inf, False, True),
    "trainer.eval_every": (0, math.inf, False, True),
    "trainer.eval_samples": (1, math.inf, False, True),
    "trainer.num_threads": (1, math.inf, False, True),
    "trainer.micro_batch_size": (1, math.inf, False, True),
    "trainer.micro_batch_tokens": (1, math.inf, False, True),
    "trainer.micro_batch_logits_gb": (0, math.inf, True, True),
    "trainer.max_full_logits_gb": (0, math.inf, True, True),
}


def _get(cfg: JackpotConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _fmt_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def validate(
    cfg: JackpotConfig, check_devices: bool = True, check_paths: bool = True
) -> JackpotConfig:
    """Check every field of ``cfg``; raise :class:`ConfigError` naming the first bad key.

    ``check_devices=False`` skips the comparison with this machine's devices and
    ``check_paths=False`` the model, data and rollout-file paths (to validate or print a GPU
    cluster's config on a laptop); a run checks both when it starts.
    """
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
    for key, (low, high, low_open, high_open) in _RANGES.items():
        value = _get(cfg, key)
        if value is None:
            continue
        v = float(value)
        ok = not math.isnan(v) and (v > low if low_open else v >= low)
        ok = ok and (v < high if high_open else v <= high)
        if not ok:
            rng = _fmt_range(low, high, low_open, high_open)
            raise ConfigError(f"{key}={value!r} is out of range; allowed {key} in {rng}")
    _validate_relations(cfg)
    if check_paths:
        check_paths_exist(cfg)
    if check_devices:
        _validate_devices(cfg.trainer)
    return cfg


def _validate_relations(cfg: JackpotConfig) -> None:
    """Checks that involve more than one key, or the environment."""
    s = cfg.sampler
    if s.lam is not None and s.budget is not None:
        raise ConfigError(
            f"sampler.lam={s.lam} and sampler.budget={s.budget} are mutually exclusive; set one"
        )
    if s.p_target is not None and s.p_target not in ("ref", "new"):
        raise ConfigError(f"sampler.p_target={s.p_target!r} is not allowed; choose 'ref' or 'new'")
    if s.alpha is not None and s.beta is not None and s.alpha >= s.beta:
        raise ConfigError(f"sampler.alpha={s.alpha} must be < sampler.beta={s.beta}")
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
    elif cfg.task.name not in ("addition", "sort", "count"):
        raise ConfigError(
            f"task.name={cfg.task.name!r} is not allowed; choose one of "
            "['addition', 'sort', 'count', 'jsonl', 'parquet']"
        )
    else:
        _validate_task_size(cfg.task)
    _validate_reward(cfg.task.reward)
    if cfg.rollout.files is None and cfg.rollout.logprobs_k < (s.topk or 1):
        raise ConfigError(
            f"sampler.topk={s.topk} needs rollout.logprobs_k >= {s.topk}, got "
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
    from jackpot.samplers import get_sampler

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
    sampler = get_sampler(cfg.sampler.name, **cfg.sampler.kwargs())
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
    from jackpot.samplers import get_sampler

    try:
        files = resolve_rollout_files(spec)
    except FileNotFoundError as exc:
        raise ConfigError(f"rollout.files={spec!r}: {exc}") from None
    sampler = get_sampler(cfg.sampler.name, **cfg.sampler.kwargs())
    sampler_topk = sampler.topk_k() if "topk" in sampler.needs() else None
    for info in read_infos(files):
        check_rollout_file(info, temperature=cfg.rollout.temperature, sampler_topk=sampler_topk)
        check_rollout_task(info, cfg.task, allow_mismatch=cfg.rollout.allow_task_mismatch)


def _validate_sampler(cfg: JackpotConfig) -> None:
    """Build the sampler once so unknown names and bad parameters fail at load time."""
    from jackpot.samplers import SamplerParameterError, get_sampler

    try:
        sampler = get_sampler(cfg.sampler.name, **cfg.sampler.kwargs())
    except SamplerParameterError as exc:
        raise ConfigError(f"sampler.* ({cfg.sampler.name}): {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"sampler.name={cfg.sampler.name!r}: {exc}") from None
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
            *(OmegaConf.create(d) for d in (_config_layers(Path(path), ()) if path else [])),
        )
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            if "${" in item:
                raise ConfigError(f"override {item!r} uses interpolation; not allowed")
        command_line = OmegaConf.from_dotlist(list(overrides or []))
        OmegaConf.merge(schema, command_line)  # unknown keys and bad types, named as given
        given = command_line.get("sampler")
        if given is not None:
            _apply_sampler_overrides(from_file.sampler, OmegaConf.to_container(given))
        cfg = OmegaConf.to_object(OmegaConf.merge(from_file, command_line))
    except OmegaConfBaseException as exc:
        raise ConfigError(_omegaconf_message(exc)) from None
    assert isinstance(cfg, JackpotConfig)
    return validate(cfg, check_devices, check_paths)


def _apply_sampler_overrides(from_file: Any, given: Any) -> None:
    """Make the file's ``sampler`` section fit the command line's ``sampler.*`` keys (in place).

    A command-line ``lam`` replaces the file's ``budget`` and vice versa. A command-line
    ``name`` naming another sampler drops the file's parameters that sampler does not take
    (its constructor's keywords; one line on stderr says which), while a command-line
    parameter it does not take is an error.
    """
    import sys

    from jackpot.samplers.registry import sampler_parameters

    for key, other in (("lam", "budget"), ("budget", "lam")):
        if given.get(key) is not None and other not in given:
            from_file[other] = None
    name = given.get("name")
    if name is None or name == from_file.name:
        return
    try:
        accepted = set(sampler_parameters(name))
    except ValueError as exc:
        raise ConfigError(f"sampler.name={name!r}: {exc}") from None
    wrong = [  # a null value unsets a key, which fits any sampler
        f"sampler.{k}"
        for k, v in given.items()
        if k not in ("name", "params", *accepted) and v is not None
    ]
    wrong += [f"sampler.params.{k}" for k in given.get("params") or {} if k not in accepted]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} given on the command line but sampler.name={name!r} does not "
            f"take it; {name!r} takes: {', '.join(sorted(accepted)) or 'no parameters'}"
        )
    dropped = []
    for key in [f.name for f in fields(SamplerConfig) if f.name not in ("name", "params")]:
        if from_file[key] is not None and key not in accepted and key not in given:
            from_file[key] = None
            dropped.append(f"sampler.{key}")
    for key in [k for k in from_file.params if k not in accepted]:
        del from_file.params[key]
        dropped.append(f"sampler.params.{key}")
    if dropped:
        print(
            f"sampler.name={name} (command line): ignoring the config file's "
            f"{', '.join(dropped)} ({name!r} does not take them)",
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
    """Every dotted key of the schema, sections included (``sampler``, ``sampler.budget``)."""
    keys = []
    for f in fields(schema):
        keys.append(prefix + f.name)
        default = getattr(schema(), f.name)
        if is_dataclass(default):
            keys.extend(_schema_keys(type(default), f"{prefix}{f.name}."))
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

    return str(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def as_dict(cfg: Any) -> Any:
    """Plain nested dict of a config dataclass (for hyper-parameter logging)."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: as_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return list(cfg)
    return cfg
