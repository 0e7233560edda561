"""Extending the library: a new algorithm in a few lines, registered and trained from a config;
the README's example is executed as written."""

import inspect
import os
import re

import jax.numpy as jnp
import numpy as np
from run_helpers import load_config

import jaxrl_llm as jrl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- what a researcher writes: GRPO with rank-based group advantages -------------------------
def rank_advantages() -> jrl.RolloutTransform:
    """A_i = 2 * rank_g(R_i) / (G - 1) - 1 in [-1, 1] (ties share the mean rank)."""

    def update(rollout, state):
        r, same = rollout.rewards, rollout.group_ids[:, None] == rollout.group_ids[None, :]
        below = jnp.sum(same & (r[None, :] < r[:, None]), axis=1)
        ties = jnp.sum(same & (r[None, :] == r[:, None]), axis=1)
        rank = below + (ties - 1) / 2
        adv = 2 * rank / jnp.maximum(jnp.sum(same, axis=1) - 1, 1) - 1
        return rollout._replace(advantages=adv[:, None] * jrl.loss_mask(rollout)), state

    return jrl.RolloutTransform(init=lambda: (), update=update)


@jrl.register_algorithm("rank_grpo")
def rank_grpo(clip_eps: float = 0.2, beta: float = 0.0) -> jrl.Algorithm:
    """GRPO's objective and passes with `rank_advantages` instead of mean/std normalisation."""
    return jrl.grpo(clip_eps=clip_eps, beta=beta)._replace(transform=rank_advantages())


# ----------------------------------------------------------------------------------------------


def test_new_algorithm_is_short():
    lines = inspect.getsource(rank_advantages).splitlines() + inspect.getsource(rank_grpo).splitlines()
    assert len([line for line in lines if line.strip()]) < 30


def test_rank_advantages_values():
    algo = jrl.make_algorithm("rank_grpo")
    batch = jrl.Rollout(
        prompt_ids=jnp.zeros((6, 1), jnp.int32),
        prompt_mask=jnp.ones((6, 1), jnp.int32),
        response_ids=jnp.zeros((6, 2), jnp.int32),
        response_mask=jnp.ones((6, 2), jnp.int32),
        group_ids=jnp.asarray([0, 0, 0, 0, 1, 1]),
        rewards=jnp.asarray([1.0, 0.0, 0.0, 0.0, 2.0, 5.0]),
    )
    batch, _ = algo.transform.update(batch, algo.transform.init())
    np.testing.assert_allclose(batch.advantages[:, 0], [1, -1 / 3, -1 / 3, -1 / 3, -1, 1], atol=1e-6)


def smoke_config(tfds_dir):
    config = load_config("grpo_arithmetic")
    config.sft.steps = 0
    config.data.data_dir = tfds_dir
    return config


def readme_block(marker: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_readme_algorithm_example_trains_through_the_config_path(tmp_path, tfds_dir):
    """The README's 'Writing a new algorithm' example, executed as written, then trained."""
    config = smoke_config(tfds_dir)
    namespace = {"config": config}
    exec(compile(readme_block("dapo_top_entropy"), "README.md", "exec"), namespace)
    assert config.algo.name == "dapo_top_entropy"
    jrl.train(config, str(tmp_path / "run"))
    main = jrl.read_metrics(str(tmp_path / "run"), phase="main")
    assert len(main) == config.train.steps
    assert all(np.isfinite(r["pg_loss"]) and 0 < r["kept_tokens"] <= 0.5 for r in main)
    assert all(r["dynamic_sampling/rounds"] >= 1 for r in main)
