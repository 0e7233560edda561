"""jaxrl_llm: JAX-native reinforcement learning and preference optimisation of language models.

The public API is flat: `import jaxrl_llm as jrl; jrl.make_algorithm("grpo", beta=0.04)`.
"""

from jaxrl_llm.algorithms import get_factory, make_algorithm, registered_algorithms
from jaxrl_llm.algorithms import register as register_algorithm
from jaxrl_llm.algorithms.dpo import dpo
from jaxrl_llm.algorithms.grpo import clipped_pg_objective, grpo
from jaxrl_llm.algorithms.ppo import ppo
from jaxrl_llm.algorithms.sft import sft
from jaxrl_llm.data.pipeline import (
    PromptTooLongError,
    TargetTooLongError,
    preference_dataset,
    prompt_dataset,
    sft_dataset,
)
from jaxrl_llm.data.sources import DatasetFieldError, final_answer, make_source
from jaxrl_llm.data.tokenizer import Tokenizer, char_tokenizer, load_tokenizer
from jaxrl_llm.distributed import distributed_config, initialize_distributed
from jaxrl_llm.lora import merge_adapters
from jaxrl_llm.losses import (
    AGGREGATION_MODES,
    aggregate,
    clipped_value_loss,
    dpo_loss,
    entropy_from_logits,
    kl_estimate,
    logprobs_and_entropy,
    ppo_clip_loss,
    sequence_logps,
)
from jaxrl_llm.models.config import (
    LoraConfig,
    TransformerConfig,
    UnsupportedModelError,
    from_hf_config,
    to_hf_config,
)
from jaxrl_llm.models.hf import CheckpointMismatchError, load_checkpoint, save_checkpoint
from jaxrl_llm.models.transformer import (
    CausalLM,
    KVCache,
    RewardModel,
    Transformer,
    ValueModel,
    init_cache,
    init_params,
    logical_axes,
    positions_from_mask,
)
from jaxrl_llm.rewards import (
    RewardFunctionError,
    exact_match,
    extract_final_answer,
    get_reward,
    math_answer,
    register_reward,
    score_completions,
)
from jaxrl_llm.rollout.sampler import (
    SampleOutput,
    SamplingConfig,
    make_sampler,
    process_logits,
    sample_from_logits,
    token_logprobs,
)
from jaxrl_llm.sharding import (
    Partitioning,
    batch_shardings,
    make_mesh,
    make_partitioning,
    mesh_config,
    param_shardings,
)
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.config import base_config
from jaxrl_llm.train.evaluation import pass_at_k
from jaxrl_llm.train.forward import critic_values, policy_outputs
from jaxrl_llm.train.metrics import MetricsWriter, read_metrics
from jaxrl_llm.train.plots import plot_curves
from jaxrl_llm.train.steps import TrainState, state_shardings
from jaxrl_llm.train.trainer import NonFiniteLossError, Trainer, train
from jaxrl_llm.transforms.base import (
    InjectState,
    chain,
    identity,
    inject_hyperparams,
    is_static_zero,
    named_chain,
)
from jaxrl_llm.transforms.estimators import (
    RunningMoments,
    gae,
    group_advantages,
    last_token_rewards,
    masked_mean,
    masked_whiten,
    rloo_advantages,
)
from jaxrl_llm.transforms.rollout import (
    gae_advantages,
    group_relative_advantages,
    kl_penalty_in_reward,
    normalize_rewards,
    reward_to_tokens,
    whiten_advantages,
)
from jaxrl_llm.transforms.rollout import rloo_advantages as rloo_advantage_transform
from jaxrl_llm.types import Algorithm, ModelOutputs, PreferenceBatch, Rollout, RolloutTransform

__all__ = [
    "AGGREGATION_MODES",
    "Algorithm",
    "CausalLM",
    "CheckpointMismatchError",
    "Checkpointer",
    "DatasetFieldError",
    "InjectState",
    "KVCache",
    "LoraConfig",
    "MetricsWriter",
    "ModelOutputs",
    "NonFiniteLossError",
    "Partitioning",
    "PreferenceBatch",
    "PromptTooLongError",
    "RewardFunctionError",
    "RewardModel",
    "Rollout",
    "RolloutTransform",
    "RunningMoments",
    "SampleOutput",
    "SamplingConfig",
    "TargetTooLongError",
    "Tokenizer",
    "TrainState",
    "Trainer",
    "Transformer",
    "TransformerConfig",
    "UnsupportedModelError",
    "ValueModel",
    "aggregate",
    "base_config",
    "batch_shardings",
    "chain",
    "char_tokenizer",
    "clipped_pg_objective",
    "clipped_value_loss",
    "critic_values",
    "distributed_config",
    "dpo",
    "dpo_loss",
    "entropy_from_logits",
    "exact_match",
    "extract_final_answer",
    "final_answer",
    "from_hf_config",
    "gae",
    "gae_advantages",
    "get_factory",
    "get_reward",
    "group_advantages",
    "group_relative_advantages",
    "grpo",
    "identity",
    "init_cache",
    "init_params",
    "initialize_distributed",
    "inject_hyperparams",
    "is_static_zero",
    "kl_estimate",
    "kl_penalty_in_reward",
    "last_token_rewards",
    "load_checkpoint",
    "load_tokenizer",
    "logical_axes",
    "logprobs_and_entropy",
    "make_algorithm",
    "make_mesh",
    "make_partitioning",
    "make_sampler",
    "make_source",
    "masked_mean",
    "masked_whiten",
    "math_answer",
    "merge_adapters",
    "mesh_config",
    "named_chain",
    "normalize_rewards",
    "param_shardings",
    "pass_at_k",
    "plot_curves",
    "policy_outputs",
    "positions_from_mask",
    "ppo",
    "ppo_clip_loss",
    "preference_dataset",
    "process_logits",
    "prompt_dataset",
    "read_metrics",
    "register_algorithm",
    "register_reward",
    "registered_algorithms",
    "reward_to_tokens",
    "rloo_advantage_transform",
    "rloo_advantages",
    "sample_from_logits",
    "save_checkpoint",
    "score_completions",
    "sequence_logps",
    "sft",
    "sft_dataset",
    "state_shardings",
    "to_hf_config",
    "token_logprobs",
    "train",
    "whiten_advantages",
]
