"""Pure torch math of jackpot: OBRS, budget solvers, top-k Z, baseline weights, estimators.

Imports torch only (no Lightning, transformers or omegaconf), so it can be used and tested
alone. Log-probabilities everywhere: natural log, ``-inf`` for zero mass, vocab on the last dim.
"""

from jackpot.functional.estimators import (
    effective_sample_size,
    kl_floor,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_reverse,
    masked_mean,
)
from jackpot.functional.logits import (
    entropy_from_logits,
    gather_logprobs,
    map_rows_checkpointed,
    max_log_ratio_from_logits,
    normalizer_from_logits,
    sampled_logprobs,
    token_logprobs,
    topk_logprobs,
)
from jackpot.functional.obrs import (
    InfeasibleBudgetError,
    acceptance_prob,
    draw_accept,
    log_acceptance_prob,
    log_normalizer,
    log_post_rejection_at,
    log_proposal_weight,
    max_feasible_budget,
    normalizer,
    obrs_weight,
    post_rejection,
    proposal_weight,
    solve_lambda,
    solve_log_lambda,
)
from jackpot.functional.topk import (
    batch_lambda,
    batch_log_lambda,
    kappa,
    sparse_topk_normalizer,
    topk_normalizer,
)
from jackpot.functional.weights import (
    geo_mean_log_ratio,
    icepop_mask,
    is_weight,
    log_ratio,
    seq_log_ratio,
    tis_weight,
)

__all__ = [
    "InfeasibleBudgetError",
    "acceptance_prob",
    "batch_lambda",
    "batch_log_lambda",
    "draw_accept",
    "effective_sample_size",
    "entropy_from_logits",
    "gather_logprobs",
    "geo_mean_log_ratio",
    "icepop_mask",
    "is_weight",
    "kappa",
    "kl_floor",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_k3_reverse",
    "log_acceptance_prob",
    "log_normalizer",
    "log_post_rejection_at",
    "log_proposal_weight",
    "log_ratio",
    "map_rows_checkpointed",
    "masked_mean",
    "max_feasible_budget",
    "max_log_ratio_from_logits",
    "normalizer",
    "normalizer_from_logits",
    "obrs_weight",
    "post_rejection",
    "proposal_weight",
    "sampled_logprobs",
    "seq_log_ratio",
    "solve_lambda",
    "solve_log_lambda",
    "sparse_topk_normalizer",
    "tis_weight",
    "token_logprobs",
    "topk_logprobs",
    "topk_normalizer",
]
