"""Reward calibration, PPO-M and PPO-C (jaxrl_llm/algorithms/calibration.py): the confidence
phrase (parsing, stripping, the PPO-M pairs through the preference pipeline), PPO-M's objective
and PPO-C's calibrated reward against the spec's numbers and hand computations, the EMA state
across steps, PPO-C's rollouts scored without the phrase, and a PPO-M phase started from a
trained reward model. The smoke runs, micro-batch invariance and the state's checkpoint round
trip are tests/test_every_algorithm.py's `ppo_m` and `ppo_c` cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ext_algorithms.ppo_reward_model import write_reward_model
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.algorithms.calibration import (
    CONFIDENCE,
    STATED,
    calibrated_rewards,
    confidence_pairs,
    confidence_pattern,
    confidence_sampling,
    parse_confidence,
    ppo_m_objective,
)
from jaxrl_llm.algorithms.registry import check_algorithm
from jaxrl_llm.data.pipeline import UnencodableTextError, preference_dataset
from jaxrl_llm.losses.reward import ppo_c_rewards, ppo_m_loss
from jaxrl_llm.models.hf import load_checkpoint
from jaxrl_llm.rollout.sampler import SampleOutput, SamplingConfig
from jaxrl_llm.rollout.strategies import PromptBatch, Scores, StrategyContext
from jaxrl_llm.train.config import ARITHMETIC_ALPHABET as ALPHABET
from jaxrl_llm.types import ModelOutputs, PreferenceBatch, Rollout

softplus = jax.nn.softplus


# ---- the confidence phrase ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template, text, expected",
    [
        (" #{}", "579 #9", ("579", 9.0)),
        (" #{}", "579", ("579", None)),
        (" #{}", "57 # 3  ", ("57", 3.0)),  # whitespace inside and after the phrase
        (" Confidence: {}", "It is 12. confidence:7.5", ("It is 12.", 7.5)),  # case-insensitive
        (" Confidence: {}", "x Confidence: 12", ("x", 10.0)),  # clipped to [0, 10]
        (" Confidence: {}", "a Confidence: 2 b Confidence: 8", ("a b", 2.0)),  # first value, all removed
        ("Confidence: {}/10", "4 Confidence: 6/10", ("4", 6.0)),
    ],
)
def test_parse_confidence(template, text, expected):
    assert parse_confidence(text, confidence_pattern(template)) == expected


@pytest.mark.parametrize("template", ["Confidence", " {} and {}", " {} "])
def test_bad_templates_name_the_field(template):
    with pytest.raises(ValueError, match="algo.template"):
        confidence_pattern(template)
    with pytest.raises(ValueError, match="algo.template"):
        jrl.make_algorithm("ppo_m", template=template)


@pytest.mark.parametrize("high, low", [(5.0, 5.0), (3.0, 7.0), (11.0, 1.0), (9.0, -1.0)])
def test_bad_confidence_levels_name_the_fields(high, low):
    with pytest.raises(ValueError, match="algo.low.*algo.high"):
        jrl.make_algorithm("ppo_m", high=high, low=low)


def test_pair_records_only_for_preference_data():
    with pytest.raises(ValueError, match="pair_records"):
        check_algorithm(jrl.make_algorithm("ppo_m")._replace(data="unpaired", head="causal_lm"), "bad")


# ---- PPO-M ---------------------------------------------------------------------------------------
def test_confidence_pairs_through_the_preference_pipeline():
    tok = jrl.char_tokenizer(ALPHABET)
    source = [{"question": "1+2=", "answer": "#### 3"}, {"question": "40+5=", "answer": "#### 45"}]
    data = preference_dataset(
        source,
        tok,
        batch_size=2,
        max_prompt_len=6,
        max_target_len=6,
        seed=0,
        shuffle=False,
        pair_records=confidence_pairs(" #{}", 9.0, 2.0),
    )
    batch = data[0]
    first, second = batch["chosen"][:2].tolist(), batch["rejected"][2:].tolist()
    chosen, rejected = batch["chosen"].tolist(), batch["rejected"].tolist()
    right = ["3", "45"]
    wrong = [w[: -len(" #2")] for w in chosen[2:]]
    assert first == [f"{r} #9" for r in right] and rejected[:2] == [f"{r} #2" for r in right]
    assert chosen[2:] == [f"{w} #2" for w in wrong] and second == [f"{w} #9" for w in wrong]
    assert all(w not in right for w in wrong)  # the dataset's rejected answers
    assert batch["prompt_ids"].shape == (4, 6) and batch["index"].tolist() == [0, 1, 0, 1]
    decoded = tok.batch_decode(
        [row[m > 0] for row, m in zip(batch["chosen_ids"], batch["chosen_mask"], strict=True)]
    )
    assert decoded == chosen  # encoded + EOS (skipped when decoding)
    assert batch["chosen_mask"][0].tolist() == [1] * 5 + [0]  # "3 #9" + EOS
    with pytest.raises(UnencodableTextError, match="tokenizer.alphabet"):
        preference_dataset(
            source, tok, batch_size=2, max_prompt_len=6, max_target_len=16, seed=0,
            pair_records=confidence_pairs(" Confidence: {}"),
        )[0]  # fmt: skip


def _pair_batch(first, second, num_seqs=None):
    """A PreferenceBatch of len(first) pairs whose scores are (first, second)."""
    n = len(first)
    ids = jnp.zeros((n, 2), jnp.int32)
    extras = {} if num_seqs is None else {"num_seqs": jnp.asarray(num_seqs, jnp.float32)}
    batch = PreferenceBatch(ids, ids + 1, ids, ids + 1, ids, ids + 1, extras=extras)
    return ModelOutputs(scores=jnp.asarray([*first, *second], jnp.float32)), batch


def test_ppo_m_objective_golden():
    objective = ppo_m_objective()
    # rl spec §34: r(cwh) − r(cwl) = 1.0, r(rwl) − r(rwh) = 0.5 -> 0.313262 + 0.474077 = 0.787339.
    # Row 0 = (cwh, cwl) = (1, 0), row 1 = (rwl, rwh) = (0.5, 0): confidence_pairs' layout, B = 1.
    loss, metrics = objective(*_pair_batch([1.0, 0.5], [0.0, 0.0]), None)
    np.testing.assert_allclose(loss, 0.787339, atol=1e-6)
    assert metrics["accuracy"] == 1.0
    # Preference spec §20.3 (cwh 2, cwl 1, rwh −0.5, rwl 0.5 -> 0.626523) with a second pair by
    # hand (all equal: 2·log 2): the mean over pairs of ppo_m_loss.
    cwh, cwl, rwh, rwl = [2.0, 0.3], [1.0, 0.3], [-0.5, 0.3], [0.5, 0.3]
    loss, metrics = objective(*_pair_batch(cwh + rwl, cwl + rwh), None)
    expected = np.mean(ppo_m_loss(jnp.array(cwh), jnp.array(cwl), jnp.array(rwh), jnp.array(rwl)))
    np.testing.assert_allclose(expected, (0.626523 + 2 * math.log(2.0)) / 2, atol=1e-6)
    np.testing.assert_allclose(loss, expected, atol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], 0.5, atol=1e-7)  # ties are not right
    # A margin, and whole-mini-batch normalisation: half the rows of a mini-batch of 8 rows.
    loss, _ = ppo_m_objective(margin=1.0)(*_pair_batch([1.0, 0.5], [0.0, 0.0], num_seqs=8.0), None)
    np.testing.assert_allclose(loss, 2 * (softplus(0.0) + softplus(0.5)) / 8, atol=1e-6)


def test_ppo_m_combined_adds_the_plain_pairs_bradley_terry_term():
    """'combined': rows (cwh, cwl), (rwl, rwh), (y_w, y_l) of one pair, L = PPO-M + BT(plain)."""
    records = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    rows = confidence_pairs(" #{}", 9.0, 1.0, combined=True)(records)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("2 #9", "2 #1"), ("3 #1", "3 #9"), ("2", "3")]
    loss, _ = ppo_m_objective(blocks=3)(*_pair_batch([1.0, 0.5, 2.0], [0.0, 0.0, 0.0]), None)
    np.testing.assert_allclose(loss, 0.787339 + softplus(-2.0), atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ppo_m_objective_finite_at_extremes(sign):
    def loss(scores):
        outputs, batch = _pair_batch(scores[:2], scores[2:])
        return ppo_m_objective(margin=0.5)(outputs, batch, None)[0]

    value, grad = jax.value_and_grad(loss)(jnp.array([sign * 1e3, -sign * 1e3, -sign * 1e3, 0.0]))
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_ppo_m_starts_from_a_trained_reward_model(tmp_path, tfds_dir):
    rm_dir = write_reward_model(str(tmp_path / "rm"), ALPHABET)
    jrl.char_tokenizer(ALPHABET).save(rm_dir)  # an exported reward model has its tokenizer
    config = load_config("ppo_m_arithmetic")
    config.data.update(data_dir=tfds_dir, check_records=0)
    config.model.checkpoint = rm_dir
    config.sft.steps = 0
    trainer = jrl.Trainer(config, str(tmp_path / "run"))
    state = trainer._initial_state(trainer.phases[-1], trainer.init_params, 0)
    _, stored = load_checkpoint(rm_dir)
    assert set(state.params) == {"trunk", "score"}
    np.testing.assert_array_equal(np.asarray(state.params["score"]), np.asarray(stored["score"]))
    assert np.abs(np.asarray(stored["score"])).max() > 0  # not the zero head of a policy start


# ---- PPO-C ---------------------------------------------------------------------------------------
def test_ppo_c_rewards_spec_and_hand_values():
    # rl spec §34: r̄ = 1.0, c̃ = 0.9: R = 2.0 -> 2.4, R = 0.5 -> 0.4 (α = 0 keeps r̄ at 1.0).
    rewards, avg = ppo_c_rewards(1.0, jnp.array([2.0, 0.5]), 0.9, alpha=0.0)
    np.testing.assert_allclose(rewards, [2.4, 0.4], atol=1e-6)
    assert float(avg) == 1.0
    # 'difference' by hand: R + w (R − r̄)(c̃ − 0.5) = 2 + 0.5·1·0.4, 0.5 + 0.5·(−0.5)·0.4.
    rewards, _ = ppo_c_rewards(1.0, jnp.array([2.0, 0.5]), 0.9, alpha=0.0, adjustment="difference")
    np.testing.assert_allclose(rewards, [2.2, 0.4], atol=1e-6)
    # Both modes with the EMA updated first: r̄' = 0.1·mean([3, −1]) + 0.9·0 = 0.1; c̃ [0.2, 0.5].
    rewards, avg = ppo_c_rewards(0.0, jnp.array([3.0, -1.0]), jnp.array([0.2, 0.5]), adjustment="difference")
    np.testing.assert_allclose(avg, 0.1, atol=1e-7)
    np.testing.assert_allclose(rewards, [3.0 + 0.5 * 2.9 * -0.3, -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="adjustment"):
        ppo_c_rewards(0.0, jnp.ones(2), 0.5, adjustment="ratio")


@pytest.mark.parametrize("adjustment", ["threshold", "difference"])
def test_ppo_c_rewards_finite_at_extremes(adjustment):
    def total(r):
        out, avg = ppo_c_rewards(jnp.asarray(5.0), r, jnp.array([1.0, 0.0]), adjustment=adjustment, clip=1e4)
        return jnp.sum(out) + avg

    value, grad = jax.value_and_grad(total)(jnp.array([1e3, -1e3]))
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def _rollout(rewards, confidence, stated):
    b = len(rewards)
    ids = jnp.zeros((b, 2), jnp.int32)
    extras = {CONFIDENCE: jnp.asarray(confidence, jnp.float32), STATED: jnp.asarray(stated, jnp.float32)}
    return Rollout(ids, ids + 1, ids, ids + 1, rewards=jnp.asarray(rewards, jnp.float32), extras=extras)


def test_calibrated_rewards_carry_the_ema_across_steps():
    calibrate = calibrated_rewards(reward_avg_init=0.5, clip=4.0)
    step = jax.jit(calibrate.update)
    # Step 1: R clipped to [−4, 4] -> [4, −1]; r̄ = 0.1·1.5 + 0.9·0.5 = 0.6; c̃ [0.9, 0.5].
    # 4 ≥ 0.6: 4 + 0.5·4·0.4 = 4.8, clipped again to 4 (the official second clamp); −1 < 0.6, c̃ 0.5: −1.
    out, state = step(_rollout([6.0, -1.0], [0.9, 0.5], [1.0, 0.0]), calibrate.init())
    np.testing.assert_allclose(state.reward_avg, 0.6, atol=1e-6)
    np.testing.assert_allclose(out.rewards, [4.0, -1.0], atol=1e-6)
    expected = {"reward_avg": 0.6, "confidence_mean": 0.7, "stated_fraction": 0.5, "reward_mean": 1.5}
    for name, value in expected.items():
        np.testing.assert_allclose(out.metrics[f"ppo_c/{name}"], value, atol=1e-6)
    # Step 2 from step 1's state: r̄ = 0.1·1 + 0.9·0.6 = 0.64; 1 ≥ 0.64, c̃ 0.2: 1 + 0.5·1·(−0.3) = 0.85.
    out, state = step(_rollout([1.0, 1.0], [0.2, 0.5], [1.0, 0.0]), state)
    np.testing.assert_allclose(state.reward_avg, 0.64, atol=1e-6)
    np.testing.assert_allclose(out.rewards, [0.85, 1.0], atol=1e-6)


def test_ppo_c_state_starts_at_reward_avg_init_and_runs_first():
    algo = jrl.make_algorithm("ppo_c", reward_avg_init=-1.5)
    assert float(algo.transform.init()[0].reward_avg) == -1.5  # chain(calibrated_rewards, ppo's)
    assert algo.value_objective is not None and algo.strategy is not None


def test_no_stated_confidence_changes_no_reward():
    calibrate = calibrated_rewards()
    rewards = np.array([1.0, 0.0, -2.0, 0.5], np.float32)
    for adjustment in ("threshold", "difference"):
        out, _ = calibrated_rewards(adjustment=adjustment).update(
            _rollout(rewards, [0.5] * 4, [0.0] * 4), calibrate.init()
        )
        np.testing.assert_allclose(out.rewards, rewards)


def test_calibrated_rewards_need_the_confidence_strategy():
    calibrate = calibrated_rewards()
    with pytest.raises(ValueError, match="confidence_sampling"):
        calibrate.update(_rollout([1.0], [0.5], [0.0])._replace(extras={}), calibrate.init())
    with pytest.raises(ValueError, match="algo.adjustment"):
        jrl.make_algorithm("ppo_c", adjustment="ratio")


def test_confidence_sampling_scores_the_samples_without_their_phrase():
    tok = jrl.char_tokenizer(ALPHABET)
    eos, pad = tok.eos_ids[0], tok.pad_id
    t = 8
    texts = [("579 #9", True), ("578", True), ("12 #3", False), ("4 # 10", True)]
    ids = np.full((4, t), pad, np.int32)
    mask = np.zeros((4, t), np.int32)
    for i, (text, finished) in enumerate(texts):
        row = tok.encode(text) + ([eos] if finished else [])
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    seen = {}

    def sample_fn(params, prompt_ids, prompt_mask, rng, num_samples):
        assert num_samples == 2 and len(prompt_ids) == 2
        return SampleOutput(ids, mask, np.zeros((4, t), np.float32), np.repeat(np.arange(2), 2), np.int32(t))

    def score_fn(rows, response_ids, response_mask, completions, finished):
        seen.update(ids=response_ids, mask=response_mask, completions=completions, finished=finished)
        return Scores(np.arange(4, dtype=np.float32), {"fake": np.arange(4, dtype=np.float32)})

    prompt_ids, prompt_mask = tok.encode_batch(["1+2=", "3+4="], 4)
    prompts = PromptBatch(
        prompt_ids, prompt_mask, np.array(["1+2=", "3+4="]), np.array(["3", "7"]), np.arange(2)
    )
    ctx = StrategyContext(
        params=None, step=0, num_samples=2, tokenizer=tok, aux={}, sample_fn=sample_fn, score_fn=score_fn,
        sampling=SamplingConfig(max_new_tokens=t, num_samples=2, stop_ids=tok.eos_ids, pad_id=pad),
        extra_prompts=None,
    )  # fmt: skip
    r = confidence_sampling(" #{}").collect(ctx, prompts, jax.random.PRNGKey(0))
    assert seen["completions"] == ["579", "578", "12", "4"] and seen["finished"].tolist() == [1, 1, 0, 1]
    scored = [seen["ids"][i][seen["mask"][i] > 0].tolist() for i in range(4)]
    assert scored == [
        tok.encode("579") + [eos],
        ids[1][mask[1] > 0].tolist(),
        tok.encode("12"),
        tok.encode("4") + [eos],
    ]
    np.testing.assert_array_equal(r.response_ids, ids)  # the policy trains on what it sampled
    np.testing.assert_allclose(r.extras[CONFIDENCE], [0.9, 0.5, 0.3, 1.0])
    assert r.extras[STATED].tolist() == [1, 0, 1, 1] and r.rewards.tolist() == [0, 1, 2, 3]
    assert r.group_ids.tolist() == [0, 0, 1, 1] and r.extras["reward/fake"].tolist() == [0, 1, 2, 3]
