"""jaxrl_llm: JAX-native reinforcement learning and preference optimisation of language models.

The public API is flat: `import jaxrl_llm as jrl; jrl.make_sampler(...)`.
"""

from jaxrl_llm.data.tokenizer import Tokenizer, char_tokenizer, load_tokenizer
from jaxrl_llm.models.config import TransformerConfig, UnsupportedModelError, from_hf_config, to_hf_config
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
from jaxrl_llm.rollout.sampler import (
    SampleOutput,
    SamplingConfig,
    make_sampler,
    process_logits,
    sample_from_logits,
    token_logprobs,
)

__all__ = [
    "CausalLM",
    "CheckpointMismatchError",
    "KVCache",
    "RewardModel",
    "SampleOutput",
    "SamplingConfig",
    "Tokenizer",
    "Transformer",
    "TransformerConfig",
    "UnsupportedModelError",
    "ValueModel",
    "char_tokenizer",
    "from_hf_config",
    "init_cache",
    "init_params",
    "load_checkpoint",
    "load_tokenizer",
    "logical_axes",
    "make_sampler",
    "positions_from_mask",
    "process_logits",
    "sample_from_logits",
    "save_checkpoint",
    "to_hf_config",
    "token_logprobs",
]
