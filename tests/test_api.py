"""Pins the public API surface and checks the command-line demo end to end."""

import json
import os
import subprocess
import sys

import jaxrl_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED_API = {
    "adaptive_kl_penalty_in_reward", "add_metrics", "aggregate", "AGGREGATION_MODES", "Algorithm",
    "asymre", "AuxModel", "bapo", "base_config", "baseline_advantages", "batch_shardings",
    "behaviour_as_old", "best_of_n", "CausalLM", "chain", "char_tokenizer",
    "check_microbatch_invariance", "chosen_nll", "Checkpointer", "CheckpointError", "CheckpointMismatchError",
    "cispo", "clip_advantages", "clip_cov", "clip_cov_tokens", "clip_rewards", "clipped_value_loss",
    "combine_ensemble", "concat_rollouts", "ConfigError", "content_digest", "copo", "cpo",
    "copo_advantages", "critic_pass", "critic_values", "dapo", "DatasetFieldError", "dcpo",
    "dcpo_advantages", "disco", "distributed_config", "dpo", "dpo_loss", "dr_grpo", "drpo",
    "dynamic_sampling", "entropy_bonus", "entropy_from_logits", "Environment", "estimators",
    "exact_match", "extend_prompts", "extract_final_answer", "filter_all_correct_groups",
    "final_answer", "flex_dpo", "from_hf_config", "gae", "get_environment", "get_factory", "get_reward", "gmpo",
    "gpg", "greedy_baseline", "group_advantages", "group_sampling", "grpo", "grpo_lambda",
    "grpo_lambda_rewards", "gspo", "gspo_token", "high_entropy", "hinted_prefix", "identity",
    "importance_weight", "ipo", "init_cache", "init_params", "initialize_distributed",
    "inject_hyperparams", "InjectState", "InvarianceReport", "is_static_zero", "kl_cov",
    "kl_cov_tokens", "kl_estimate", "kl_penalty_in_reward", "kl_penalty_in_sequence_reward",
    "kl_to_reference", "kto", "KVCache", "load_aux_model", "load_checkpoint", "load_tokenizer",
    "log_odds", "logical_axes", "logprobs_and_entropy", "LoraConfig", "loss_mask", "make_algorithm",
    "make_mesh", "make_partitioning", "make_sampler", "make_source", "make_strategy", "math_answer",
    "merge_adapters", "mesh_config", "MetricsFileWarning", "MetricsWriter", "mismatch_metrics",
    "ModelOutputs", "modpo", "multi_label_rm", "multi_turn", "named_chain", "ngrpo", "nll", "NonFiniteLossError",
    "normalisers", "normalize_rewards", "Observation", "old_logp", "old_policy_pass",
    "on_policy_distill", "opmd", "orpo", "overlong_penalty", "p3o", "pacs", "param_shardings",
    "Partitioning", "Pass", "pass_at_k", "PassContext", "pf_ppo", "pf_ppo_filter", "plot_curves",
    "policy_outputs", "policy_surrogate", "positions_from_mask", "preference_objective", "ppo", "ppo_clip_loss", "ppo_max",
    "preference_dataset", "preference_link", "PreferenceBatch", "process_logits", "prompt_dataset",
    "PromptBatch", "PromptTooLongError", "read_metrics", "reference_pass", "reg_grpo",
    "regularised", "register_algorithm", "register_environment", "register_reward", "register_strategy",
    "registered_algorithms", "registered_environments", "registered_strategies", "reinforce_pp",
    "reinforce_pp_advantages", "reinforce_pp_baseline", "rejection_mask", "remax",
    "remax_advantages", "replay", "reward_model", "reward_model_pass", "online_dpo", "preference_pairs", "brain", "brain_weights_transform", "superhf", "top_k_completions", "full_kl", "bradley_terry_loss", "reward_to_tokens", "RewardFunctionError",
    "RewardModel", "rewards_vary", "RewardSources", "rloo", "rloo_advantages", "Rollout", "Rounds",
    "rpo", "RolloutStrategy", "RolloutTransform", "sample_from_logits", "SampleOutput", "SamplingConfig",
    "sapo", "save_checkpoint", "Schedule", "schedule", "score_completions", "Scores", "select_rows",
    "sequence_logps", "sequence_mean", "sft", "simpo", "sft_dataset", "state_shardings", "StrategyContext",
    "sum_objectives", "TargetTooLongError", "teacher_pass", "tgdpo", "to_hf_config", "token_logprobs",
    "token_loss_objective", "token_mean", "Tokenizer", "top_entropy_tokens", "train", "Trainer", "TrainState",
    "Transformer", "TransformerConfig", "trpa", "truncated_is", "UnencodableTextError",
    "scored_dataset", "unpaired_dataset", "UnsupportedModelError", "valid_group_scale", "value_loss", "ValueModel", "whiten_advantages",
    "with_correction", "WorkdirFileError", "WorkdirLockedError"
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
    assert "config.job='tran' is not one of ['reward_ensemble', 'sample', 'train']" in result.stderr


def test_unknown_reward_from_the_command_line_is_a_clear_error(tmp_path):
    result = _main("--config=configs/grpo_arithmetic.py:smoke", "--config.rewards.foo=1.0", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "--config.rewards.foo=1.0: the config has no field 'rewards.foo'" in result.stderr
    assert "--config.rewards=\"{'foo': 1.0}\"" in result.stderr and "exact_match" in result.stderr
