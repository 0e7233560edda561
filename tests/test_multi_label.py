"""Multi-label reward models (K-output reward head, `multi_label_rm`) and MO-GRPO (GRPO rewarded
by R = Σ_k w_k r_k of such a model): the spec's golden values, the objective, the synthetic
aspects and scored records, the held-out metrics, the K-output head against `transformers`, the
auxiliary-model reward source, and one smoke run of each config (the reward model's orbax step
then rewards MO-GRPO). Microbatch invariance, no-recompile, the checkpoint round trip and
extreme labels run in tests/test_every_algorithm.py with every other algorithm."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ext_algorithms.ppo_reward_model import write_reward_model
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.algorithms.multi_label import multi_label_objective
from jaxrl_llm.data import pipeline
from jaxrl_llm.data.aspects import ASPECTS, aspect_example, aspect_scores, check_num_labels
from jaxrl_llm.data.sources import DatasetFieldError, record_format
from jaxrl_llm.losses.reward import multi_label_mse, weighted_reward
from jaxrl_llm.models.auxiliary import reward_scores
from jaxrl_llm.train.config import ARITHMETIC_ALPHABET
from jaxrl_llm.train.evaluation import label_metrics
from jaxrl_llm.train.forward import sequence_scores
from jaxrl_llm.train.steps import with_normalisers

K = len(ASPECTS)


def test_weighted_reward_golden_and_mse_finite_at_extremes():
    # rl spec §32: scores [0.8, 0.6, 0.4, 1.0], equal weights -> 0.7.
    np.testing.assert_allclose(weighted_reward(jnp.array([[0.8, 0.6, 0.4, 1.0]])), [0.7], atol=1e-6)
    for s in (1e3, -1e3):
        value, grads = jax.value_and_grad(lambda p, t: multi_label_mse(p, t).sum(), argnums=(0, 1))(
            jnp.array([[s, -s, 0.0]]), jnp.array([[0.0, 1.0, s]])
        )
        assert np.isfinite(value) and all(np.isfinite(np.asarray(g)).all() for g in grads)


def _scored_batch(labels):
    labels = jnp.asarray(labels, jnp.float32)
    b = labels.shape[0]
    ones = jnp.ones((b, 2), jnp.int32)
    return with_normalisers(jrl.Rollout(ones, ones, ones, ones, extras={"labels": labels}))


def test_objective_by_hand():
    # Spec §20.4 row (MSE 0.0175) and a second row by hand: (0.25 + 0 + 0.01 + 0) / 4 = 0.065.
    scores = jnp.array([[0.8, 0.6, 0.4, 0.9], [0.5, 1.0, 0.1, 0.0]])
    labels = [[1.0, 0.5, 0.5, 1.0], [0.0, 1.0, 0.0, 0.0]]
    loss, metrics = multi_label_objective()(jrl.ModelOutputs(scores=scores), _scored_batch(labels), ())
    np.testing.assert_allclose(loss, (0.0175 + 0.065) / 2, atol=1e-7)
    np.testing.assert_allclose(metrics["mse/0"], (0.04 + 0.25) / 2, atol=1e-7)
    np.testing.assert_allclose(metrics["score/1"], 0.8, atol=1e-7)
    # K = 1: the head's scores are [B], exactly as a scalar reward model's.
    loss, _ = multi_label_objective()(
        jrl.ModelOutputs(scores=jnp.array([0.5, 2.0])), _scored_batch([[1.0], [0.0]]), ()
    )
    np.testing.assert_allclose(loss, (0.25 + 4.0) / 2, atol=1e-7)
    with pytest.raises(ValueError, match=r"model\.num_labels=4"):
        multi_label_objective()(jrl.ModelOutputs(scores=scores[:, :3]), _scored_batch(labels), ())
    algorithm = jrl.make_algorithm("multi_label_rm")
    assert (algorithm.data, algorithm.head) == ("scored", "reward")


def test_synthetic_aspects():
    assert aspect_scores("579", "579") == (1.0, 1.0, 1.0)
    assert aspect_scores("589", "579") == (0.0, 1.0, 1.0)
    assert aspect_scores("579+1", "579") == (1.0, 0.6, 0.0)
    assert aspect_scores("58 =", "579") == (0.0, 0.75, 0.0)
    examples = [aspect_example("579", 0, i) for i in range(64)]
    assert examples == [aspect_example("579", 0, i) for i in range(64)]  # deterministic
    assert examples != [aspect_example("579", 1, i) for i in range(64)]  # seeded
    kinds = {(c, f) for _, (c, _, f) in examples}
    assert kinds == {(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)}  # all four kinds
    for completion, labels in examples:
        assert labels == aspect_scores(completion, "579") and len(completion) <= 5
        assert set(completion) <= set(ARITHMETIC_ALPHABET)
    check_num_labels(K)
    with pytest.raises(ValueError, match=r"model\.num_labels=2.*--config\.model\.num_labels=3"):
        check_num_labels(2)


def test_scored_records_parse_and_refuse_malformed_ones():
    assert pipeline.parse_labels([3, 1], 0, 2, (0.0, 4.0)) == (0.75, 0.25)
    assert record_format({"prompt": "1+1=", "completion": "2", "labels": [1.0]}) == "scored"
    bad = [
        ("0.5", r"record 7 has labels='0\.5'"),
        ([], r"record 7 has labels=\[\]"),
        ([0.5, float("nan")], "finite numbers"),
        ([True, 0.5], "finite numbers"),
        ([0.5, 0.5, 0.5], r"3 labels.*model\.num_labels=2"),
        ([0.5, 1.5], r"outside data\.label_range=\(0, 1\)"),
    ]
    for labels, match in bad:
        with pytest.raises(DatasetFieldError, match=match):
            pipeline.parse_labels(labels, 7, 2)
    with pytest.raises(ValueError, match=r"data\.label_range"):
        pipeline.parse_labels([0.5], 0, 1, (1.0, 1.0))
    with pytest.raises(DatasetFieldError, match="record 1 has no field 'labels'"):
        pipeline.preference_parts({"prompt": "1+1=", "completion": "2"}, "scored", 1)


def test_scored_dataset_from_records_and_from_questions(tmp_path):
    tok = jrl.char_tokenizer(ARITHMETIC_ALPHABET)
    common = dict(batch_size=2, max_prompt_len=8, max_target_len=6, seed=0, shuffle=False)
    records = [
        {"prompt": "1+2=", "completion": "3", "labels": [4, 0, 2]},
        {"prompt": "2+2=", "completion": "5 =", "labels": [0, 1, 4]},
    ]
    batch = pipeline.scored_dataset(records, tok, num_labels=3, label_range=(0, 4), **common)[0]
    np.testing.assert_allclose(batch["labels"], [[1.0, 0.0, 0.5], [0.0, 0.25, 1.0]])
    assert batch["completion_ids"].shape == batch["completion_mask"].shape == (2, 6)
    assert batch["completion_mask"].sum(1).tolist() == [2, 4]  # the completion + EOS
    with pytest.raises(DatasetFieldError, match=r"record 0 has labels \[4, 0, 2\] outside"):
        pipeline.scored_dataset(records, tok, num_labels=3, **common)
    questions = [{"question": f"{a}+100=", "answer": f"#### {a + 100}"} for a in range(100, 104)]
    batch = pipeline.scored_dataset(questions, tok, num_labels=3, **common)[1]
    for i, completion in zip(batch["index"], batch["completion"], strict=True):
        want = aspect_example(str(i + 200), 0, i)
        assert (completion, tuple(batch["labels"][list(batch["index"]).index(i)])) == (
            want[0],
            pytest.approx(want[1]),
        )
    with pytest.raises(ValueError, match=r"model\.num_labels=2"):
        pipeline.scored_dataset(questions, tok, num_labels=2, **common)


def test_label_metrics_by_hand():
    scores = np.array([[0.8, 0.5], [0.2, 0.5], [0.5, 0.5]])
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    got = label_metrics(scores, labels)
    assert got["label_mse/0"] == pytest.approx((0.04 + 0.04 + 0.0) / 3)
    assert got["label_mse/1"] == pytest.approx((0.25 + 0.25 + 0.25) / 3)
    assert got["label_mse"] == pytest.approx((0.08 + 0.75) / 6)
    assert got["label_corr/0"] == pytest.approx(1.0)  # scores 0.5 + 0.6 (label − 0.5)
    assert got["label_corr/1"] == 0.0  # a constant score: no correlation


def _rows(n=4, p=5, t=4, vocab=20, seed=0):
    """Left-padded prompts and right-padded responses of random real tokens (ids >= 3)."""
    rng = np.random.default_rng(seed)
    prompt_mask = (np.arange(p)[None] >= rng.integers(0, p - 1, n)[:, None]).astype(np.int32)
    response_mask = (np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None]).astype(np.int32)
    prompt_ids = rng.integers(3, vocab, (n, p)).astype(np.int32) * prompt_mask
    response_ids = rng.integers(3, vocab, (n, t)).astype(np.int32) * response_mask
    return prompt_ids, prompt_mask, response_ids, response_mask


def _packed(rows):
    """Each row's real tokens, right-padded with the pad id 0 (how HF finds the last token)."""
    seqs = [np.concatenate([p[m > 0], r[k > 0]]) for p, m, r, k in zip(*rows, strict=True)]
    width = max(len(s) for s in seqs)
    ids, mask = np.zeros((len(seqs), width), np.int64), np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def test_k_output_head_exports_to_transformers_and_rewards_as_an_aux_model(tmp_path):
    import torch
    import transformers

    path = write_reward_model(str(tmp_path / "rm"), ARITHMETIC_ALPHABET, num_labels=K)
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    assert (hf["num_labels"], len(hf["id2label"]), hf["problem_type"]) == (K, K, "regression")
    aux = jrl.load_aux_model("rm", {"checkpoint": path, "head": "reward"})
    assert aux.config.num_labels == K and aux.params["score"].shape == (aux.config.d_model, K)
    rows = _rows(vocab=aux.config.vocab_size)
    ours = np.asarray(sequence_scores(aux.config, aux.params, *rows))
    assert ours.shape == (4, K) and np.abs(ours[:, 0] - ours[:, 1]).min() > 1e-3
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    ids, mask = _packed(rows)
    with torch.no_grad():
        hf_scores = model.eval()(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(np.clip(np.cumsum(mask, -1) - 1, 0, None)),
        ).logits.numpy()
    np.testing.assert_allclose(hf_scores, ours, rtol=0, atol=1e-4)
    # As a reward: R = Σ_k w_k r_k, equal weights by default; raw scores per aspect.
    np.testing.assert_allclose(reward_scores(aux, aux.params, *rows), ours.mean(1), atol=1e-6)
    weighted = jrl.load_aux_model("rm", {"checkpoint": path, "head": "reward", "label_weights": (1, 0, 2)})
    want = ours[:, 0] + 2 * ours[:, 2]
    np.testing.assert_allclose(reward_scores(weighted, weighted.params, *rows), want, atol=1e-5)
    prompts = jrl.PromptBatch(rows[0], rows[1], np.array([""] * 4), np.array([""] * 4), np.arange(4))
    got = jrl.RewardSources({"rm": 0.5}, {"rm": weighted})(
        prompts, rows[2], rows[3], [""] * 4, np.ones(4, bool)
    )
    np.testing.assert_allclose(got.per_source["rm"], want, atol=1e-5)
    np.testing.assert_allclose(got.rewards, 0.5 * want, atol=1e-5)
    for k in range(K):
        np.testing.assert_allclose(got.per_source[f"rm/{k}"], ours[:, k], atol=1e-5)
    with pytest.raises(ValueError, match=r"aux_models\.rm\.label_weights=\(1, 0\) must be 3 finite numbers"):
        jrl.load_aux_model("rm", {"checkpoint": path, "head": "reward", "label_weights": (1, 0)})
    scalar = write_reward_model(str(tmp_path / "scalar"), ARITHMETIC_ALPHABET)
    with pytest.raises(ValueError, match=r"only a multi-label reward model"):
        jrl.load_aux_model("s", {"checkpoint": scalar, "head": "reward", "label_weights": (1.0,)})
    with pytest.raises(jrl.CheckpointMismatchError, match=r"num_labels=3.*model\.num_labels=3"):
        jrl.load_checkpoint(path, num_labels=1)


def test_k_outputs_that_cannot_train_are_refused_before_the_workdir(tfds_dir, tmp_path):
    config = load_config("reward_model_arithmetic")
    config.model.num_labels = 3
    with pytest.raises(jrl.ConfigError, match=r"model\.num_labels=3.*set --config\.model\.num_labels=1"):
        jrl.Trainer(config, str(tmp_path / "run"))
    config = load_config("multi_label_rm_arithmetic")
    config.data.data_dir = tfds_dir
    config.model.num_labels = 2  # the synthetic aspects are 3
    with pytest.raises(ValueError, match=r"model\.num_labels=2.*--config\.model\.num_labels=3"):
        jrl.Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _smoke(config, tfds_dir):
    config.data.data_dir = tfds_dir
    config.sft.steps = 0
    config.train.update(steps=2, checkpoint_every=2)
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)
    return config


def test_configs_train_a_multi_label_rm_that_rewards_mo_grpo(tfds_dir, tmp_path):
    config = _smoke(load_config("multi_label_rm_arithmetic"), tfds_dir)
    rm_dir = str(tmp_path / "rm")
    summary = jrl.Trainer(config, rm_dir).fit()
    assert set(summary["main_after"]) >= {"label_mse", *(f"label_corr/{k}" for k in range(K))}
    rows = [r for r in jrl.read_metrics(rm_dir, phase="main") if "loss" in r]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and "mse/2" in r for r in rows)

    config = _smoke(load_config("mo_grpo_arithmetic"), tfds_dir)
    config.aux_models.rm.checkpoint = os.path.join(rm_dir, "checkpoints", "main", "2")  # orbax step
    config.aux_models.rm.label_weights = (0.5, 0.25, 0.25)
    workdir = str(tmp_path / "grpo")
    jrl.Trainer(config, workdir).fit()
    rows = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert len(rows) == 2
    for r in rows:  # the weighted aspects are the reward; the verifier is logged at weight 0
        want = 0.5 * r["reward/rm/0"] + 0.25 * r["reward/rm/1"] + 0.25 * r["reward/rm/2"]
        assert r["reward_mean"] == pytest.approx(r["reward/rm"], abs=1e-5)
        assert r["reward/rm"] == pytest.approx(want, abs=1e-5) and "reward/exact_match" in r
