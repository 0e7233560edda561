"""PPO rewarded by a reward-model checkpoint (configs/ppo_arithmetic.py:smoke): no verifier,
the frozen RM's score is the reward. `configure` writes a random reward-head HF checkpoint over
the policy's char tokenizer and makes it the one reward source (config.aux_models.rm)."""

import jax

import jaxrl_llm as jrl

NAME = "ext_ppo_reward_model"
RM_SHAPE = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)


@jrl.register_algorithm(NAME)
def ppo_reward_model(**hyperparams) -> jrl.Algorithm:
    """PPO (critic, GAE, KL in the reward); the reward is what config.rewards names."""
    return jrl.ppo(**hyperparams)


def write_reward_model(path, alphabet, seed=1, **shape) -> str:
    """A random reward model (HF directory) over the char tokenizer of `alphabet`."""
    tok = jrl.char_tokenizer(alphabet)
    ids = dict(eos_token_id=tok.eos_ids, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id)
    cfg = jrl.TransformerConfig(vocab_size=tok.vocab_size, init_std=0.5, **ids, **{**RM_SHAPE, **shape})
    params = jrl.init_params(cfg, jax.random.PRNGKey(seed), head="reward")
    jrl.save_checkpoint(path, cfg, params, head="reward")
    return path


def configure(config, tmp_path, **rm_shape):
    rm_dir = write_reward_model(f"{tmp_path}/rm", config.tokenizer.alphabet, **rm_shape)
    config.algo.name = NAME  # the smoke config's PPO hyper-parameters stay
    config.aux_models = {"rm": {"checkpoint": rm_dir, "head": "reward"}}
    config.rewards = {"rm": 1.0}
    config.sft.steps = 0
    return config
