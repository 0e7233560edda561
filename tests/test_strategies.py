"""Rollout strategies on a fake sampler and scorer (host only, no model): dynamic sampling's
keep/draw/fill rules, greedy baselines, best-of-n, hinted prefixes, composition, determinism;
and the batch types' no-shared-defaults guarantee."""

import jax
import numpy as np
import pytest

import jaxrl_llm as jrl
from jaxrl_llm.rollout.sampler import SampleOutput, SamplingConfig

T, G = 4, 2


def prompts(values, width=3):
    """Prompt i is the single token values[i] (left-padded); its answer is str(values[i])."""
    n = len(values)
    ids = np.zeros((n, width), np.int32)
    ids[:, -1] = values
    mask = np.zeros((n, width), np.int32)
    mask[:, -1] = 1
    return jrl.PromptBatch(
        ids, mask, np.array([str(v) for v in values]), np.array([str(v) for v in values]), np.arange(n)
    )


class FakeTokenizer:
    def batch_decode(self, rows):
        return [" ".join(map(str, r)) for r in rows]

    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]


def fake_context(reward_of, extra=None, calls=None):
    """sample: response = [last prompt token, sample index g, 0, 0] for temperature > 0 and
    [last prompt token, 9, ...] when greedy; score: reward_of(prompt value, g)."""
    sampling = SamplingConfig(max_new_tokens=T, num_samples=G, stop_ids=(), pad_id=0)

    def sample_fn(params, ids, mask, rng, temperature=1.0, num_samples=G, **_):
        n = len(ids) * num_samples
        last = np.repeat(np.asarray(ids)[:, -1], num_samples)
        resp = np.zeros((n, T), np.int32)
        resp[:, 0] = last
        resp[:, 1] = 9 if temperature == 0 else np.tile(np.arange(num_samples), len(ids))
        if calls is not None:
            calls.append((len(ids), temperature, num_samples))
        resp_mask = np.zeros((n, T), np.int32)
        resp_mask[:, :2] = 1
        return SampleOutput(
            resp, resp_mask, -np.ones((n, T), np.float32) * resp_mask, np.zeros(n, np.int32), 2
        )

    def score_fn(rows, response_ids, response_mask, completions, finished):
        rewards = np.array([reward_of(int(r[0]), int(r[1])) for r in response_ids], np.float32)
        return jrl.Scores(rewards, {"fake": rewards})

    return jrl.StrategyContext(
        params=None, step=0, num_samples=G, sampling=sampling, tokenizer=FakeTokenizer(), aux={},
        sample_fn=sample_fn, score_fn=score_fn, extra_prompts=extra or (lambda r: prompts([10 * r + i for i in range(3)])),
    )  # fmt: skip


def test_group_sampling_layout_and_extras():
    r = jrl.group_sampling().collect(fake_context(lambda p, g: g), prompts([1, 2]), jax.random.PRNGKey(0))
    assert r.group_ids.tolist() == [0, 0, 1, 1] and r.extras["prompt_index"].tolist() == [0, 0, 1, 1]
    assert r.rewards.tolist() == [0, 1, 0, 1] and r.extras["reward/fake"].tolist() == [0, 1, 0, 1]
    assert r.prompt_ids[:, -1].tolist() == [1, 1, 2, 2]


def test_dynamic_sampling_drops_constant_groups_and_draws_more_prompts():
    # Prompts 1 and 3 vary (reward = g), prompt 2 is constant; extra round r has prompts 10r..10r+2,
    # of which only the even ones vary.
    vary = {1, 3, 10, 12}
    ctx = fake_context(lambda p, g: float(g) if p in vary else 1.0)
    strategy = jrl.dynamic_sampling(max_rounds=3)
    r = strategy.collect(ctx, prompts([1, 2, 3]), jax.random.PRNGKey(0))
    assert r.prompt_ids[::G, -1].tolist() == [1, 3, 10]  # in sampling order, constant groups dropped
    assert r.group_ids.tolist() == [0, 0, 1, 1, 2, 2] and r.rewards.shape == (6,)
    assert (
        r.metrics["dynamic_sampling/sampled_groups"] == 6 and r.metrics["dynamic_sampling/kept_groups"] == 3
    )
    assert r.metrics["dynamic_sampling/rounds"] == 2 and r.metrics["dynamic_sampling/filled_groups"] == 0
    again = strategy.collect(ctx, prompts([1, 2, 3]), jax.random.PRNGKey(0))
    jax.tree.map(np.testing.assert_array_equal, tuple(r[:4]), tuple(again[:4]))  # deterministic


def test_dynamic_sampling_fills_with_discarded_groups_after_max_rounds():
    ctx = fake_context(lambda p, g: float(g) if p == 2 else 0.0)  # only prompt 2 ever varies
    r = jrl.dynamic_sampling(max_rounds=2).collect(ctx, prompts([1, 2, 3]), jax.random.PRNGKey(0))
    assert r.prompt_ids[::G, -1].tolist() == [2, 1, 3]  # the kept group, then the earliest discarded
    assert r.metrics["dynamic_sampling/filled_groups"] == 2 and r.metrics["dynamic_sampling/rounds"] == 2


def test_greedy_baseline_composes_inside_dynamic_sampling():
    calls = []
    ctx = fake_context(lambda p, g: 0.5 if g == 9 else float(g), calls=calls)  # greedy reward 0.5
    r = jrl.dynamic_sampling(jrl.greedy_baseline()).collect(ctx, prompts([1, 2]), jax.random.PRNGKey(0))
    assert r.extras["baseline_rewards"].tolist() == [0.5] * 4 and r.metrics["greedy_reward_mean"] == 0.5
    assert (2, 0.0, 1) in calls  # one greedy sample per prompt
    with pytest.raises(ValueError, match="inside dynamic_sampling"):
        jrl.greedy_baseline(jrl.dynamic_sampling()).collect(ctx, prompts([1, 2]), jax.random.PRNGKey(0))


def test_best_of_n_keeps_the_highest_reward_rows_per_group():
    ctx = fake_context(lambda p, g: float(g == 0))
    r = jrl.best_of_n(keep=1).collect(ctx, prompts([1, 2]), jax.random.PRNGKey(0))
    assert r.response_ids[:, 1].tolist() == [0, 0] and r.rewards.tolist() == [1.0, 1.0]
    assert r.metrics["best_of_n/reward_mean_all"] == 0.5


def test_hinted_prefix_attends_to_the_hint_without_loss():
    ctx = fake_context(lambda p, g: 1.0)
    strategy = jrl.hinted_prefix(lambda prompt, answer: "7 7" if prompt == "1" else "", max_hint_tokens=3)
    r = strategy.collect(ctx, prompts([1, 2]), jax.random.PRNGKey(0))
    assert r.response_ids.shape == (4, 3 + T)
    assert r.response_ids[0, :4].tolist() == [7, 7, 7, 0]  # hint, then the sample continuing (last token 7)
    assert r.response_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0] and r.loss_mask[0].tolist() == [
        0,
        0,
        1,
        1,
        0,
        0,
        0,
    ]
    assert r.logp_behav[0, :2].tolist() == [0, 0] and r.extras["hinted"].tolist() == [1, 1, 0, 0]
    assert r.loss_mask[2].tolist() == [1, 1, 0, 0, 0, 0, 0]  # no hint: trained from the first token


def test_strategy_registry_names_the_config_field():
    assert {"group_sampling", "dynamic_sampling", "greedy_baseline", "best_of_n"} <= set(
        jrl.registered_strategies()
    )
    assert jrl.make_strategy("dynamic_sampling", max_rounds=2, inner="greedy_baseline")
    with pytest.raises(ValueError, match=r"rollout\.max_round.*accepts: inner, keep, max_rounds"):
        jrl.make_strategy("dynamic_sampling", max_round=2)
    with pytest.raises(ValueError, match="unknown rollout strategy 'dynamic'.*rollout.name"):
        jrl.make_strategy("dynamic")


def test_batches_never_share_mutable_defaults():
    a = jrl.Rollout(np.zeros((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), np.ones((1, 1)))
    a.extras["x"] = 1
    a.metrics["y"] = 2
    b = jrl.Rollout(np.zeros((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), np.ones((1, 1)))
    assert b.extras == {} and b.metrics == {}
    ones = np.ones((1, 1))
    assert jrl.PreferenceBatch(ones, ones, ones, ones, ones, ones).extras == {}


def test_config_passes_sampling_overrides_to_group_sampling():
    # config.rollout = {"name": "group_sampling", "temperature": 1.1}: a sampling override (a
    # known mismatch between behaviour and trainer log-probs), not an unknown argument.
    from jaxrl_llm.rollout.strategies import make_strategy

    assert make_strategy("group_sampling", temperature=1.1).collect is not None
    with pytest.raises(ValueError, match=r"rollout\.k"):
        make_strategy("dynamic_sampling", k=2)
