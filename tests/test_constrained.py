"""CGPO's CRPG and the χ² occupancy regulariser (jaxrl_llm/losses/constrained.py,
jaxrl_llm/algorithms/constrained.py): the spec's goldens, hand-computed cases, finite values and
gradients at |x| = 1e3; the CRPG transform on a hand-built batch; the reference_baseline and
judge_samples strategies on a fake sampler (the reference's tokens reach a verifier and a tiny
random reward model); the √χ̂² term exact over micro-batches through `statistics`; the config.
No trainer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import outputs, prepare, rollout, rows
from ext_algorithms.ppo_reward_model import write_reward_model
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.constrained import occupancy_regulariser
from jaxrl_llm.losses import constrained as cl
from jaxrl_llm.models.auxiliary import load_aux_model, reward_scores
from jaxrl_llm.rollout.sampler import SampleOutput, SamplingConfig
from jaxrl_llm.rollout.strategies import judge_samples, reference_baseline
from jaxrl_llm.train.config import ARITHMETIC_ALPHABET
from jaxrl_llm.train.steps import with_normalisers

E10 = math.exp(10.0)
EXTREMES = (1e3, -1e3)
sg = jax.lax.stop_gradient


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def assert_finite_with_gradients(fn, *args):
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# ---- pure functions --------------------------------------------------------------------------


def test_crpg_rewards_spec_golden_and_hand_cases():
    # Spec: R − R_base = 1, judge pass, KL 5, KL_thr 10 -> 0.731059 · 0.5 = 0.365529.
    np.testing.assert_allclose(cl.crpg_rewards(1.0, 0.0, 1.0, 5.0, 10.0), 0.365529, atol=1e-6)
    np.testing.assert_allclose(cl.calibrated_reward(2.5, 1.5), 0.731059, atol=1e-6)
    # A wrong answer under the verifier (R 0, R_base 1), KL 2: σ(−1)·0.8 (hand) = 0.215153.
    np.testing.assert_allclose(cl.crpg_rewards(0.0, 1.0, 1.0, 2.0, 10.0), sigmoid(-1.0) * 0.8, atol=1e-6)
    # A failed judge or a KL at/over the threshold vetoes; a negative sampled KL opens the gate above 1.
    np.testing.assert_allclose(cl.crpg_rewards(1.0, 0.0, 0.0, 5.0, 10.0), 0.0)
    np.testing.assert_allclose(cl.kl_gate(jnp.array([10.0, 12.0, -2.0]), 10.0), [0.0, 0.0, 1.2], atol=1e-6)
    np.testing.assert_allclose(cl.crpg_advantages(jnp.array([0.5, 0.1, 0.0])), [0.3, -0.1, -0.2], atol=1e-6)


def test_occupancy_divergences_spec_golden_and_clipped_cases():
    chi2, kl = cl.occupancy_divergences(jnp.array([0.5]))
    np.testing.assert_allclose(chi2, [0.255252], atol=1e-6)  # (e^.5 − 1) + (e^−.5 − 1)
    np.testing.assert_allclose(kl, [0.106531], atol=1e-6)  # .5 + e^−.5 − 1
    np.testing.assert_allclose(cl.sqrt_chi2(chi2), [0.505225], atol=1e-6)
    np.testing.assert_allclose(cl.sqrt_chi2(0.0), 0.01, atol=1e-7)  # the 1e-4 floor
    # Beyond |L| = 10 the exp continues linearly: e^10 (1 + 12 − 10) − 1 = 3e^10 − 1 (hand).
    chi2, kl = cl.occupancy_divergences(jnp.array([12.0, -12.0]))
    big = 3.0 * E10 - 1.0
    np.testing.assert_allclose(chi2, [big + math.expm1(-12.0)] * 2, rtol=1e-6)
    np.testing.assert_allclose(kl, [12.0 + math.expm1(-12.0), -12.0 + big], rtol=1e-6)
    np.testing.assert_allclose(
        cl.clipped_expm1(jnp.array([0.5, 12.0, -1e3])), [0.648721, big, -1.0], rtol=1e-6
    )


@pytest.mark.parametrize("x", EXTREMES)
def test_finite_values_and_gradients_at_extremes(x):
    assert_finite_with_gradients(lambda r, b, k: jnp.sum(cl.crpg_rewards(r, b, 1.0, k, 10.0)), x, -x, x)
    assert_finite_with_gradients(lambda r, k: jnp.sum(cl.crpg_advantages(cl.crpg_rewards(r, 0.0, 1.0, k, 10.0))),
                                 jnp.array([x, 0.0]), jnp.array([-x, 1.0]))  # fmt: skip
    assert_finite_with_gradients(lambda lr: jnp.sum(sum(cl.occupancy_divergences(lr))), jnp.array([x, 0.0]))
    assert_finite_with_gradients(
        lambda lr: cl.sqrt_chi2(jnp.mean(cl.occupancy_divergences(lr)[0])), jnp.array([x])
    )
    assert_finite_with_gradients(lambda c: cl.sqrt_chi2(c), 0.0)


# ---- CGPO ------------------------------------------------------------------------------------


def cgpo_batch():
    """4 rows of 2 tokens (row 3 has 1). KL_i = Σ_t (logp_old − logp_ref) = 5, 5, 12, 0."""
    mask = jnp.array([[1, 1], [1, 1], [1, 1], [1, 0]])
    logp_old = jnp.array([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -9.0]])
    logp_ref = logp_old - jnp.array([[2.0, 3.0], [2.0, 3.0], [6.0, 6.0], [0.0, 4.0]])
    extras = {
        "baseline_rewards": jnp.array([0.0, 0.0, 0.0, 1.0]),
        "judge/finished": jnp.array([1.0, 0.0, 1.0, 1.0]),
        "judge/is_number": jnp.array([1.0, 1.0, 1.0, 1.0]),
    }
    return rollout([1.0, 1.0, 1.0, 1.0], mask, logp_old=logp_old, logp_ref=logp_ref, extras=extras)


def test_crpg_transform_gates_calibrates_and_centres_on_the_batch():
    algo = make_algorithm("cgpo", kl_threshold=10.0)
    batch, _ = prepare(algo, cgpo_batch())
    # ĉ: row 0 the spec's 0.365529; row 1 fails 'finished'; row 2 KL 12 ≥ 10; row 3 σ(0)·1 = 0.5.
    c_hat = np.array([sigmoid(1.0) * 0.5, 0.0, 0.0, 0.5])
    expected = (c_hat - c_hat.mean())[:, None] * np.array([[1, 1], [1, 1], [1, 1], [1, 0]])
    np.testing.assert_allclose(batch.advantages, expected, atol=1e-6)
    m = batch.metrics
    np.testing.assert_allclose(
        [m["cgpo/judge/finished"], m["cgpo/judge/is_number"], m["cgpo/judge_pass"]], [0.75, 1, 0.75]
    )
    np.testing.assert_allclose([m["cgpo/kl_gated_fraction"], m["cgpo/seq_kl"]], [0.25, 5.5])
    np.testing.assert_allclose(m["cgpo/c_hat_mean"], c_hat.mean(), atol=1e-6)
    np.testing.assert_allclose(m["cgpo/calibrated_reward"], (3 * sigmoid(1.0) + 0.5) / 4, atol=1e-6)
    # The loss −Σ A_i logp / #tokens: d loss / d logp = −A / 7 on the loss tokens.
    norm = with_normalisers(batch)
    grad = jax.grad(lambda lp: algo.objective(outputs(lp), norm, ())[0])(jnp.zeros((4, 2)))
    np.testing.assert_allclose(grad, -expected / 7.0, atol=1e-6)


def test_crpg_length_judge_and_errors():
    batch, _ = prepare(make_algorithm("cgpo", max_length=1), cgpo_batch())
    assert float(batch.metrics["cgpo/judge/length"]) == 0.25  # only row 3 has ≤ 1 loss token
    np.testing.assert_allclose(batch.advantages[3, 0], 0.5 - 0.5 / 4, atol=1e-6)
    with pytest.raises(ValueError, match=r"algo.judges='finished,nope'.*unknown reward 'nope'"):
        make_algorithm("cgpo", judges="finished,nope")
    with pytest.raises(ValueError, match="algo.kl_threshold"):
        make_algorithm("cgpo", kl_threshold=0.0)
    with pytest.raises(ValueError, match="algo.max_length"):
        make_algorithm("cgpo", max_length=0)
    without = cgpo_batch()
    without = without._replace(extras={k: v for k, v in without.extras.items() if k != "baseline_rewards"})
    with pytest.raises(ValueError, match=r"extras\['baseline_rewards'\].*reference_baseline"):
        prepare(make_algorithm("cgpo"), without)


T = 4


class CharTokenizer:
    """The arithmetic char tokenizer, as the trainer's `ctx.tokenizer`."""

    def __init__(self):
        self.tok = jrl.char_tokenizer(ARITHMETIC_ALPHABET)
        self.eos_ids, self.pad_id = self.tok.eos_ids, self.tok.pad_id

    def encode(self, text, add_special_tokens=False):
        return self.tok.encode(text, add_special_tokens=add_special_tokens)

    def batch_decode(self, rows):
        return [self.tok.backend.decode(r) for r in rows]


def context(score_fn, responses):
    """A StrategyContext whose sampler returns `responses` (texts, one per row, + EOS) for every call."""
    tok = CharTokenizer()
    sampling = SamplingConfig(max_new_tokens=T, num_samples=2, stop_ids=tok.eos_ids, pad_id=tok.pad_id)

    def sample_fn(params, ids, mask, rng, **_):
        n = len(responses)
        out = np.full((n, T), tok.pad_id, np.int32)
        out_mask = np.zeros((n, T), np.int32)
        for i, text in enumerate(responses):
            row = [*tok.encode(text), tok.eos_ids[0]]
            out[i, : len(row)], out_mask[i, : len(row)] = row, 1
        return SampleOutput(out, out_mask, np.zeros((n, T), np.float32), np.zeros(n, np.int32), T)

    return jrl.StrategyContext(
        params=None, step=0, num_samples=2, sampling=sampling, tokenizer=tok, aux={}, sample_fn=sample_fn,
        score_fn=score_fn, extra_prompts=lambda r: None,
    )  # fmt: skip


def prompt_batch():
    tok = jrl.char_tokenizer(ARITHMETIC_ALPHABET)
    texts = ["1+2=", "10+5="]
    ids = np.zeros((2, 6), np.int32)
    mask = np.zeros((2, 6), np.int32)
    for i, text in enumerate(texts):
        row = tok.encode(text, add_special_tokens=False)
        ids[i, -len(row) :], mask[i, -len(row) :] = row, 1
    return jrl.PromptBatch(ids, mask, np.array(texts), np.array(["#### 3", "#### 15"]), np.arange(2))


def test_reference_baseline_scores_the_reference_answer_with_the_verifier():
    seen = []
    verifier = jrl.RewardSources({"exact_match": 1.0}, {})

    def score_fn(rows, ids, mask, completions, finished):
        seen.append((np.asarray(ids), np.asarray(mask), list(completions)))
        return verifier(rows, ids, mask, completions, finished)

    ctx = context(score_fn, ["3", "4", "15", "1+"])
    r = reference_baseline().collect(ctx, prompt_batch(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(r.rewards, [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(r.extras["baseline_rewards"], [1.0, 1.0, 1.0, 1.0])  # R(y_base) = 1
    ids, mask, texts = seen[-1]  # the reference responses: final_answer + EOS, right-padded to T
    tok = CharTokenizer()
    assert texts == ["3", "15"] and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert ids[1, :3].tolist() == [*tok.encode("15"), tok.eos_ids[0]]
    assert r.metrics["reference_reward_mean"] == 1.0
    with pytest.raises(ValueError, match="max_new_tokens=6"):
        reference_baseline(reference=lambda p, a: "12345").collect(ctx, prompt_batch(), jax.random.PRNGKey(0))


def test_reference_baseline_reward_model_scores_the_reference_tokens(tmp_path):
    rm = load_aux_model(
        "rm", {"checkpoint": write_reward_model(str(tmp_path / "rm"), ARITHMETIC_ALPHABET), "head": "reward"}
    )
    sources = jrl.RewardSources({"rm": 1.0}, {"rm": rm})
    prompts = prompt_batch()
    r = reference_baseline().collect(context(sources, ["3", "4", "15", "1+"]), prompts, jax.random.PRNGKey(0))
    tok = CharTokenizer()
    ref = np.zeros((2, T), np.int32)
    ref[0, :2], ref[1, :3] = [*tok.encode("3"), 2], [*tok.encode("15"), 2]
    direct = reward_scores(
        rm, rm.params, prompts.prompt_ids, prompts.prompt_mask, ref, (ref > 0).astype(np.int32)
    )
    np.testing.assert_allclose(r.extras["baseline_rewards"], np.repeat(np.asarray(direct), 2), rtol=1e-5)
    assert np.ptp(np.asarray(direct)) > 0  # two different references, two different scores


def test_judge_samples_writes_each_verdict():
    ctx = context(jrl.RewardSources({"exact_match": 1.0}, {}), ["3", "3+", "15", "1"])
    strategy = judge_samples("finished, is_number", reference_baseline())
    r = strategy.collect(ctx, prompt_batch(), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(r.extras["judge/finished"], [1, 1, 1, 1])
    np.testing.assert_array_equal(r.extras["judge/is_number"], [1, 0, 1, 1])
    assert "baseline_rewards" in r.extras and not any(k.startswith("judge/") for k in r.metrics)
    with pytest.raises(ValueError, match="judge_samples needs extras\\['prompt_index'\\]"):
        judge_samples("finished", jrl.dynamic_sampling()).collect(ctx, prompt_batch(), jax.random.PRNGKey(0))


# ---- χ² occupancy regulariser ----------------------------------------------------------------


def chi2_batch(scale):
    """8 rows of 3 tokens; logp − logp_ref = scale·(fixed noise) on the loss tokens."""
    mask = np.ones((8, 3), np.int32)
    mask[::3, 2] = 0
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (8, 3)))
    logp = jnp.asarray(-1.0 + 0.1 * noise, jnp.float32)
    batch = rollout(None, mask, logp_ref=logp - scale * noise)
    return with_normalisers(batch), logp


@pytest.mark.parametrize("divergence,scale", [("sqrt_chi2", 0.3), ("sqrt_chi2", 1e-4), ("kl", 0.3)])
def test_occupancy_regulariser_is_exact_over_micro_batches(divergence, scale):
    coef = 0.5
    algo = make_algorithm("chi2_ppo", coef=coef, divergence=divergence)
    assert (algo.statistics is not None) == (divergence == "sqrt_chi2")
    assert "reference" in [p.name for p in algo.passes]
    term = occupancy_regulariser(coef, divergence)
    batch, logp = chi2_batch(scale)

    def stats_of(b, lp):
        return None if algo.statistics is None else algo.statistics(outputs(sg(lp)), b, ())

    def split(lp):  # 4 micro-batches with the mini-batch totals, as the trainer sums them
        micro = [(rows(batch, slice(i, i + 2)), lp[i : i + 2]) for i in range(0, 8, 2)]
        totals = (
            None
            if algo.statistics is None
            else jax.tree.map(lambda *x: sum(x), *[stats_of(b, p) for b, p in micro])
        )
        return jax.tree.map(lambda *x: sum(x), *[term(outputs(p, stats=totals), b, ()) for b, p in micro])

    def reference(lp):  # the formula on the whole mini-batch, from the pure functions
        log_ratio = jnp.sum((lp - batch.logp_ref) * batch.response_mask, -1)
        chi2, kl = cl.occupancy_divergences(log_ratio)
        return coef * (cl.sqrt_chi2(jnp.mean(chi2)) if divergence == "sqrt_chi2" else jnp.mean(kl))

    (loss, metrics), grad = jax.value_and_grad(split, has_aux=True)(logp)
    want, want_grad = jax.value_and_grad(reference)(logp)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-9)
    whole, whole_metrics = term(outputs(logp, stats=stats_of(batch, logp)), batch, ())
    np.testing.assert_allclose(whole, want, rtol=1e-5)
    for key, value in whole_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
    below_floor = divergence == "sqrt_chi2" and float(metrics["chi2/chi2"]) < 1e-4
    assert below_floor == (scale == 1e-4)
    assert (float(jnp.max(jnp.abs(grad))) == 0.0) == below_floor  # no gradient under the floor, as the code


def test_chi2_ppo_rejects_an_unknown_divergence():
    with pytest.raises(ValueError, match="algo.divergence='chi'"):
        make_algorithm("chi2_ppo", divergence="chi")


def test_cgpo_config_variants():
    c = load_config("cgpo_arithmetic", "rm,smoke")
    assert c.algo.name == "cgpo" and c.algo.judges == "finished,is_number" and c.sampling.num_samples == 4
    assert dict(c.rewards) == {"rm": 1.0, "exact_match": 0.0} and c.model.num_layers == 1
    assert dict(load_config("cgpo_arithmetic", None).rewards) == {"exact_match": 1.0}
    with pytest.raises(ValueError, match="unknown config argument 'big'"):
        load_config("cgpo_arithmetic", "big")
