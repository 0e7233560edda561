"""Pins the public API surface and checks the command-line demo end to end."""

import json
import os
import subprocess
import sys

import jaxrl_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED_API = {
    "AGGREGATION_MODES", "Algorithm", "CausalLM", "CheckpointMismatchError", "Checkpointer",
    "DatasetFieldError", "InjectState", "KVCache", "MetricsWriter", "ModelOutputs",
    "NonFiniteLossError", "PreferenceBatch", "PromptTooLongError", "RewardFunctionError", "RewardModel",
    "Rollout", "RolloutTransform", "RunningMoments", "SampleOutput", "SamplingConfig",
    "TargetTooLongError", "Tokenizer", "TrainState", "Trainer", "Transformer", "TransformerConfig",
    "UnsupportedModelError", "ValueModel", "aggregate", "base_config", "chain", "char_tokenizer",
    "clipped_pg_objective", "clipped_value_loss", "critic_values", "dpo", "dpo_loss",
    "entropy_from_logits", "exact_match", "extract_final_answer", "final_answer", "from_hf_config",
    "gae", "gae_advantages", "get_factory", "get_reward", "group_advantages",
    "group_relative_advantages", "grpo", "identity", "init_cache", "init_params", "inject_hyperparams",
    "is_static_zero", "kl_estimate", "kl_penalty_in_reward", "last_token_rewards", "load_checkpoint",
    "load_tokenizer", "logical_axes", "logprobs_and_entropy", "make_algorithm", "make_sampler",
    "make_source", "masked_mean", "masked_whiten", "math_answer", "named_chain", "normalize_rewards",
    "pass_at_k", "plot_curves", "policy_outputs", "positions_from_mask", "ppo", "ppo_clip_loss",
    "preference_dataset", "process_logits", "prompt_dataset", "read_metrics", "register_algorithm",
    "register_reward", "registered_algorithms", "reward_to_tokens", "rloo_advantage_transform",
    "rloo_advantages", "sample_from_logits", "save_checkpoint", "score_completions", "sequence_logps",
    "sft", "sft_dataset", "to_hf_config", "token_logprobs", "train", "whiten_advantages",
    "Partitioning", "batch_shardings", "make_mesh", "make_partitioning", "mesh_config", "param_shardings",
    "state_shardings", "LoraConfig", "merge_adapters", "distributed_config", "initialize_distributed",
}  # fmt: skip


def test_public_api_is_pinned():
    """Adding or removing a public name is a deliberate act: update this list with it."""
    assert set(jaxrl_llm.__all__) == EXPECTED_API
    assert all(hasattr(jaxrl_llm, name) for name in jaxrl_llm.__all__)


def _main(*args, tmp_path):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    return subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sample_demo_runs_from_the_command_line(tmp_path):
    result = _main("--config=configs/sample_demo.py:smoke", f"--workdir={tmp_path}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stdout
    with open(tmp_path / "samples.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 3 * 4
    assert all(1 <= r["tokens"] <= 8 and r["logprob"] < 0 for r in records)


def test_sample_demo_loads_a_local_hf_checkpoint(tmp_path, tiny_config, tiny_params):
    """The real loading path: safetensors weights + tokenizer.json from one directory."""
    from jaxrl_llm import char_tokenizer, save_checkpoint

    tokenizer = char_tokenizer("0123456789+-*/=# abcdefghijklmnopqrstuvwxyz")
    assert tokenizer.vocab_size <= tiny_config.vocab_size
    checkpoint = tmp_path / "ckpt"
    save_checkpoint(str(checkpoint), tiny_config, tiny_params)
    tokenizer.save(str(checkpoint))
    result = _main(
        "--config=configs/sample_demo.py:smoke",
        f"--config.model.checkpoint={checkpoint}",
        "--config.prompts=('ab', 'c d')",
        "--config.sampling.num_samples=2",
        "--config.sampling.top_p=0.9",
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "random init" not in result.stdout and str(checkpoint) in result.stdout
    assert result.stdout.count("'ab' ->") == 2


def test_unknown_job_is_a_clear_error(tmp_path):
    result = _main("--config=configs/sample_demo.py:smoke", "--config.job=tran", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "config.job='tran' is not one of ['sample', 'train']" in result.stderr
