"""Online preference methods (online / iterative DPO, SuperHF): the pair builder and the top-k
filter on hand-built rollouts, the full-vocabulary KL seam (`Algorithm.full_kl`) against
separate forwards, SuperHF's objective by hand, and smoke runs of both configs with a
reward-model-ranked source (the verifier-ranked smoke configs run in
tests/test_every_algorithm.py). Microbatch invariance, no-recompile and
extreme-value finiteness are in tests/test_every_algorithm.py."""

import importlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config
from test_microbatch_invariance import invariance_length  # noqa: F401 (registers the reward)

import jaxrl_llm as jrl
from jaxrl_llm.losses.policy import full_kl
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.train.steps import TrainState, next_round, with_normalisers

ext = importlib.import_module("ext_algorithms.ppo_reward_model")  # tests/ is on sys.path


def rollout(rewards, lengths, finished=None, t=4):
    """A host Rollout of len(rewards) rows: row i's response has lengths[i] real tokens
    (token id 10 + i), its reference log-probs are −(i + 1) per token."""
    n = len(rewards)
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = (10 + np.arange(n)[:, None] * np.ones((1, t), np.int32)) * mask
    finished = np.ones(n, bool) if finished is None else np.asarray(finished)
    return jrl.Rollout(
        prompt_ids=np.repeat(np.arange(n)[:, None] // 2 + 1, 3, axis=1).astype(np.int32),
        prompt_mask=np.ones((n, 3), np.int32),
        response_ids=ids.astype(np.int32),
        response_mask=mask,
        rewards=np.asarray(rewards, np.float32),
        logp_ref=-(np.arange(n)[:, None] + 1.0) * mask,
        extras={"finished": finished},
    )


def test_preference_pairs_max_min_golden():
    # Spec (online / iterative DPO): scores [0.3, 1.2, −0.4, 0.9] -> max_min picks rows (1, 2).
    r = rollout([0.3, 1.2, -0.4, 0.9], [2, 3, 1, 2])
    batch, _ = jrl.preference_pairs(4).update(r, jnp.zeros((), jnp.int32))
    assert isinstance(batch, jrl.PreferenceBatch) and batch.chosen_ids.shape == (1, 4)
    np.testing.assert_array_equal(batch.chosen_ids[0], r.response_ids[1])
    np.testing.assert_array_equal(batch.rejected_mask[0], r.response_mask[2])
    np.testing.assert_array_equal(batch.ref_rejected_logps[0], r.logp_ref[2])
    np.testing.assert_allclose(batch.extras["pair_weight"], [1.0])
    np.testing.assert_allclose(batch.metrics["pairs/score_margin"], 1.6, atol=1e-6)


def test_preference_pairs_ties_eos_penalty_and_random():
    # By hand, G = 2: pair 0 ties (weight 0; first row chosen, the other rejected); pair 1
    # ranks row 2 (0.5, unfinished) above row 3 (0.2) without the penalty and below with 0.5.
    r = rollout([1.0, 1.0, 0.5, 0.2], [1, 2, 3, 4], finished=[1, 1, 0, 1])
    batch, _ = jrl.preference_pairs(2).update(r, jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(batch.extras["pair_weight"], [0.0, 1.0])
    np.testing.assert_array_equal(batch.chosen_ids[:, 0], [10, 12])
    np.testing.assert_array_equal(batch.rejected_ids[:, 0], [11, 13])
    np.testing.assert_allclose(batch.metrics["pairs/tie_fraction"], 0.5)
    penalised, _ = jrl.preference_pairs(2, missing_eos_penalty=0.5).update(r, jnp.zeros((), jnp.int32))
    np.testing.assert_array_equal(penalised.chosen_ids[:, 0], [10, 13])
    # 'max_random': the rejected row is never the chosen one, and is drawn afresh each step.
    r8 = rollout(np.arange(8, dtype=np.float32), [1] * 8)
    pairs = jrl.preference_pairs(8, choose="max_random")
    drawn = [int(pairs.update(r8, jnp.asarray(k))[0].rejected_ids[0, 0]) - 10 for k in range(20)]
    assert all(0 <= d < 7 for d in drawn) and len(set(drawn)) > 1
    with pytest.raises(ValueError, match="choose"):
        jrl.preference_pairs(2, choose="best")


def test_top_k_completions_keeps_the_best_non_empty():
    # Group 0: row 1 is the best but empty (only its stop token) -> rows 2 (0.5) and 0 (0.1).
    # Group 1: every row empty but row 4 -> row 4, then the lower-index empty row 3 (over row
    # 5, whose reward is higher: empty rows rank below every other) with a zero loss mask.
    r = rollout([0.1, 0.9, 0.5, 0.3, 0.7, 0.8], [2, 1, 3, 2, 2, 1])
    r = r._replace(extras={"finished": np.array([1, 1, 1, 1, 1, 1], bool)})
    r = r._replace(response_mask=np.asarray(r.response_mask).copy())
    mask = np.asarray(r.response_mask)
    mask[3] = mask[5] = 0
    mask[3, 0] = mask[5, 0] = 1  # rows 3 and 5: the stop token alone
    kept = jrl.top_k_completions(3, top_k=2).update(r, ())[0]
    np.testing.assert_array_equal(kept.response_ids[:, 0], [12, 10, 14, 13])
    np.testing.assert_allclose(kept.rewards, [0.5, 0.1, 0.7, 0.3])
    np.testing.assert_array_equal(np.asarray(kept.loss_mask).sum(1), [3, 2, 2, 0])
    np.testing.assert_allclose(kept.metrics["superhf/empty_fraction"], 3 / 6)  # rows 1, 3, 5


def test_full_kl_seam_equals_separate_forwards(tiny_config, tiny_params):
    ref = jax.tree.map(lambda x: x * 0.9, tiny_params)
    rng = np.random.default_rng(0)
    r = jrl.Rollout(
        prompt_ids=rng.integers(1, 97, (4, 3)).astype(np.int32),
        prompt_mask=np.ones((4, 3), np.int32),
        response_ids=rng.integers(1, 97, (4, 5)).astype(np.int32),
        response_mask=np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 5, [1] + [0] * 4], np.int32),
    )

    def logits(params):
        model = jrl.CausalLM(tiny_config)
        tokens = np.concatenate([r.prompt_ids, r.response_ids], 1)
        mask = np.concatenate([r.prompt_mask, r.response_mask], 1)
        return model.apply({"params": params}, tokens, mask)[:, 2:7]

    for direction, (p, q) in (("forward", (ref, tiny_params)), ("reverse", (tiny_params, ref))):
        out = batch_policy_outputs(tiny_config, tiny_params, r, 1.0, kl_params=ref, kl_direction=direction)
        expected = full_kl(logits(p), logits(q)) * r.response_mask
        np.testing.assert_allclose(out.kl, expected, atol=1e-5)
        assert float(jnp.max(out.kl)) > 1e-4  # the two models differ
    # No gradient flows into the reference through kl.
    grad = jax.grad(lambda q: batch_policy_outputs(tiny_config, tiny_params, r, 1.0, kl_params=q).kl.sum())(
        ref
    )
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


def test_superhf_objective_by_hand():
    # Two kept rows: CE = token mean of −logp over 3 kept tokens; KL = mean over rows of the
    # clamped token-mean KL: row 0 (0.2 + 0.4) / 2 = 0.3, row 1 max(0, −0.1) = 0 -> 0.15.
    logp = jnp.array([[-1.0, -2.0], [-3.0, 0.0]])
    kl = jnp.array([[0.2, 0.4], [-0.1, 0.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    batch = jrl.Rollout(jnp.ones((2, 1), jnp.int32), jnp.ones((2, 1), jnp.int32), mask, mask)
    objective = jrl.make_algorithm("superhf", kl_coef=0.35).objective
    loss, metrics = objective(jrl.ModelOutputs(logp=logp, kl=kl), with_normalisers(batch), ())
    np.testing.assert_allclose(metrics["nll"], 2.0, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], 0.15, atol=1e-6)
    np.testing.assert_allclose(loss, 2.0 + 0.35 * 0.15, atol=1e-6)
    assert jrl.make_algorithm("superhf").needs() == frozenset({"reference"})


@pytest.mark.parametrize("name", ["online_dpo", "superhf"])
def test_config_runs_with_a_reward_model(name, tfds_dir, tmp_path):
    """`configs/<name>_arithmetic.py:rm,smoke` ranked by an auxiliary reward model (the
    verifier-ranked `:smoke` configs run in tests/test_every_algorithm.py)."""
    config = load_config(f"{name}_arithmetic", "rm,smoke")
    config.data.data_dir = tfds_dir
    config.sft.steps = 0
    config.train.update(steps=2, checkpoint_every=2)
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)
    config.aux_models.rm.checkpoint = ext.write_reward_model(str(tmp_path / "rm"), config.tokenizer.alphabet)
    workdir = str(tmp_path / "run")
    jrl.Trainer(config, workdir).fit()
    rows = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    for r in rows:  # the reward model ranks; the verifier is logged at weight 0
        assert r["reward_mean"] == pytest.approx(r["reward/rm"], abs=1e-5) and "reward/exact_match" in r
        key = "pairs/tie_fraction" if name == "online_dpo" else "superhf/kept_reward"
        assert key in r


def test_rm_config_without_a_checkpoint_names_the_field(tfds_dir, tmp_path):
    config = load_config("online_dpo_arithmetic", "rm,smoke")
    config.data.data_dir = tfds_dir
    with pytest.raises(ValueError, match=r"aux_models\.rm\.checkpoint"):
        jrl.Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_brain_weights_transform_golden_and_objective_by_hand():
    # Spec (BRAIn): r [1, 0, −1], S_ref [−5, −4, −6], S_q = S_θ [−4.5, −4.5, −5], β 1 ->
    # weights [0.146954, 0.146954, −0.293909]. One token per response carries each sum.
    mask = np.ones((3, 1), np.int32)
    r = jrl.Rollout(
        prompt_ids=np.ones((3, 2), np.int32),
        prompt_mask=np.ones((3, 2), np.int32),
        response_ids=np.full((3, 1), 5, np.int32),
        response_mask=mask,
        rewards=np.array([1.0, 0.0, -1.0], np.float32),
        logp_ref=np.array([[-5.0], [-4.0], [-6.0]], np.float32),
        logp_behav=np.array([[-4.5], [-4.5], [-5.0]], np.float32),
    )
    out, _ = jrl.brain_weights_transform(3).update(r, ())
    np.testing.assert_allclose(out.extras["brain_weight"], [0.146954, 0.146954, -0.293909], atol=1e-6)
    alpha = np.array([0.480288, 0.480288, 0.039424])
    np.testing.assert_allclose(out.metrics["brain/ess"], 1 / np.sum(alpha**2), rtol=1e-5)
    # The objective: one prompt, L = −Σ_i w_i S_θ(y_i); by hand with S_θ = [−1, −2, −3]:
    # −(0.146954·(−1) + 0.146954·(−2) − 0.293909·(−3)) = −0.440864.
    logp = jnp.array([[-1.0], [-2.0], [-3.0]])
    objective = jrl.make_algorithm("brain", num_samples=3).objective
    loss, _ = objective(jrl.ModelOutputs(logp=logp), with_normalisers(out), ())
    np.testing.assert_allclose(loss, -(0.146954 * -1 + 0.146954 * -2 - 0.293909 * -3), atol=1e-5)


def test_next_round_golden(tiny_config):
    """`steps.next_round` by hand: α = 0 copies the policy into the reference; α = 0.3 moves
    the policy to θ̂ + 0.3 (θ̂ − θ̂_prev), the reference with it, and keeps θ̂ as the anchor."""
    theta = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([0.5])}
    prev = {"w": jnp.asarray([0.0, -1.0]), "b": jnp.asarray([1.5])}
    state = TrainState(step=0, params=theta, opt_state=None, algo_state=(), rng=None, ref_params=prev)
    plain = next_round(state, jrl.Rounds(5), tiny_config)
    np.testing.assert_array_equal(plain.ref_params["w"], theta["w"])
    assert plain.ref_params["w"] is not plain.params["w"] and plain.anchor_params is None
    apo = next_round(state._replace(anchor_params=prev), jrl.Rounds(5, 0.3), tiny_config)
    np.testing.assert_allclose(apo.params["w"], [1.3, -2.3], atol=1e-6)
    np.testing.assert_allclose(apo.params["b"], [0.2], atol=1e-6)
    np.testing.assert_allclose(apo.ref_params["w"], [1.3, -2.3], atol=1e-6)
    np.testing.assert_array_equal(apo.anchor_params["w"], theta["w"])


@pytest.mark.filterwarnings("ignore")
def test_apo_resumes_across_a_round_boundary_bit_identically(tfds_dir, tmp_path, capsys):
    """APO over 3 steps with a boundary before step 3 (the reference moves to the extrapolated
    policy, the anchor to the round's end); stopped after step 2, it resumes and ends with the
    same state, bit for bit, as the uninterrupted run."""
    config = load_config("apo_arithmetic", "smoke")
    config.data.data_dir = tfds_dir
    config.rewards = {"invariance_length": 1.0}  # varies within a random policy's groups
    config.sft.steps = 0
    config.algo.round_steps = 2
    config.train.update(steps=3, checkpoint_every=1, keep_checkpoints=3)
    config.eval.update(every=0, before=False, num_prompts=8, batch_size=8, pass_k=0)
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    jrl.Trainer(config, full).fit()
    rows = [r for r in jrl.read_metrics(full, phase="main") if "loss" in r]
    assert [r["round"] for r in rows] == [0, 0, 1]
    shutil.copytree(full, resumed)
    with jrl.Checkpointer(os.path.join(resumed, "checkpoints", "main")) as ckpt:
        ckpt.delete(3)
    capsys.readouterr()
    jrl.Trainer(config, resumed).fit()
    assert "resuming from the checkpoint at step 2" in capsys.readouterr().out
    a, b = _final_checkpoint(full), _final_checkpoint(resumed)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)
    # after the boundary the reference is the extrapolated policy, not the anchor (θ̂ of round 0)
    assert not np.array_equal(a["ref_params"]["lm_head"], a["anchor_params"]["lm_head"])


def _final_checkpoint(workdir):
    with jrl.Checkpointer(os.path.join(workdir, "checkpoints", "main")) as ckpt:
        state, meta = ckpt.restore()
    assert meta["done"]
    return state


def test_apo_under_lora_is_refused_naming_the_fields(tfds_dir, tmp_path):
    config = load_config("apo_arithmetic", "smoke")
    config.data.data_dir = tfds_dir
    config.model.lora.rank = 4
    with pytest.raises(jrl.ConfigError, match=r"algo\.alpha=0\.3.*model\.lora\.rank=4"):
        jrl.Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
