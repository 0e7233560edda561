"""The reward_model algorithm (Bradley–Terry, head 'reward'): the loss's golden values, the
calibration metric, and one smoke run through the config path whose reward model is then
(a) loaded back as an auxiliary model from its orbax step directory, (b) exported as an HF
`*ForSequenceClassification` checkpoint that `transformers` scores identically, and (c) the
reward of a GRPO run. Microbatch invariance, no-recompile and the checkpoint round trip are in
tests/test_every_algorithm.py with every other algorithm."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config
from test_aux_models import independent_scores

import jaxrl_llm as jrl
from jaxrl_llm.algorithms.registry import check_algorithm
from jaxrl_llm.losses.reward import bradley_terry_loss
from jaxrl_llm.models.auxiliary import load_aux_model, load_aux_models, reward_scores
from jaxrl_llm.rewards.models import RewardSources
from jaxrl_llm.train.ensemble import reward_ensemble_source, train_reward_ensemble
from jaxrl_llm.train.evaluation import calibration_error


def test_bradley_terry_golden():
    # The reward-modelling spec's sanity values (TRL reward_trainer.py).
    np.testing.assert_allclose(bradley_terry_loss(1.2, 0.4), 0.371101, atol=1e-6)
    np.testing.assert_allclose(bradley_terry_loss(1.2, 0.4, margin=0.5), 0.554355, atol=1e-6)
    np.testing.assert_allclose(bradley_terry_loss(1.2, 0.4, center_coef=0.01), 0.396701, atol=1e-6)
    # By hand: equal scores r_w = r_l = 1 give softplus(0) = log 2, centring 0.5 · (1 + 1)² = 2.
    np.testing.assert_allclose(bradley_terry_loss(1.0, 1.0, center_coef=0.5), np.log(2.0) + 2.0, atol=1e-6)
    # A per-pair margin [B]: pair 0 as above, pair 1 by hand: softplus(−(0 − 1 − (−1))) = log 2.
    losses = bradley_terry_loss(jnp.array([1.2, 0.0]), jnp.array([0.4, 1.0]), jnp.array([0.5, -1.0]))
    np.testing.assert_allclose(losses, [0.554355, np.log(2.0)], atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bradley_terry_finite_at_extremes(sign):
    def loss(r):
        return jnp.mean(bradley_terry_loss(r[0], r[1], margin=0.5, center_coef=0.01))

    r = jnp.array([[sign * 1e3, 0.0], [-sign * 1e3, 1.0]])
    value, grad = jax.value_and_grad(loss)(r)
    assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


def test_calibration_error_by_hand():
    # margins [2, −1]: p = σ(m) = [0.8808, 0.2689]; confidence [0.8808, 0.7311], right [1, 0].
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0])))
    expected = (abs(1 - p[0]) + abs(0 - (1 - p[1]))) / 2
    np.testing.assert_allclose(calibration_error(np.array([2.0, -1.0])), expected, atol=1e-12)
    assert calibration_error(np.zeros(4)) == pytest.approx(0.5)  # ties: confidence 0.5, all wrong
    assert calibration_error(np.full(8, 50.0)) == pytest.approx(0.0, abs=1e-12)  # sure and right


def test_reward_head_needs_preference_data():
    algorithm = jrl.make_algorithm("reward_model")
    with pytest.raises(ValueError, match="head='reward'"):
        check_algorithm(algorithm._replace(data="rollout"), "bad")
    with pytest.raises(ValueError, match="head='value_head'"):
        check_algorithm(algorithm._replace(head="value_head"), "bad")


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, tfds_dir):
    tmp = tmp_path_factory.mktemp("reward_model")
    config = load_config("reward_model_arithmetic")
    config.data.data_dir = tfds_dir
    workdir = str(tmp / "run")
    trainer = jrl.Trainer(config, workdir)
    summary = trainer.fit()
    return dict(config=config, trainer=trainer, workdir=workdir, summary=summary, tmp=tmp)


def test_smoke_run_trains_a_reward_model(rm_run):
    trainer, workdir = rm_run["trainer"], rm_run["workdir"]
    params = trainer.final_state.params
    assert set(params) == {"trunk", "score"}  # a RewardModel, started from the SFT trunk
    main = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert [r["step"] for r in main] == [5, 6, 7, 8]  # after 4 SFT steps
    assert main[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-6)  # zero-initialised score: r = 0
    for r in main:
        assert np.isfinite([r[k] for k in ("loss", "accuracy", "margin", "grad_norm")]).all()
        assert "entropy" not in r  # no policy outputs
    after = rm_run["summary"]["main_after"]
    assert set(after) >= {"pair_accuracy", "calibration_error", "reward_margin", "score_std"}
    assert "greedy_accuracy" not in after  # a reward model does not generate


def _pairs(trainer, n=8):
    """n held-out pairs as (prompt, chosen) and (prompt, rejected) rows."""
    ds = trainer.evaluator._batches("test", "preference")[1][0]
    rows = {k: np.asarray(ds[k][:n]) for k in ds if k.endswith(("_ids", "_mask"))}
    chosen = (rows["prompt_ids"], rows["prompt_mask"], rows["chosen_ids"], rows["chosen_mask"])
    rejected = (rows["prompt_ids"], rows["prompt_mask"], rows["rejected_ids"], rows["rejected_mask"])
    return chosen, rejected


def test_orbax_step_loads_as_reward_model_and_exports_to_transformers(rm_run, tmp_path):
    import torch
    import transformers

    trainer = rm_run["trainer"]
    step_dir = os.path.join(rm_run["workdir"], "checkpoints", "main", "8")
    aux = load_aux_model("rm", {"checkpoint": step_dir, "head": "reward"})
    chosen, rejected = _pairs(trainer)
    ours = np.concatenate([np.asarray(reward_scores(aux, aux.params, *rows)) for rows in (chosen, rejected)])
    final = trainer.final_state.params
    direct = np.concatenate(
        [
            np.asarray(jrl.RewardModel(trainer.model_config).apply({"params": final}, *_packed(rows)))
            for rows in (chosen, rejected)
        ]
    )
    np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-5)
    assert np.ptp(ours) > 0  # the trained head separates something

    export = str(tmp_path / "hf_rm")
    jrl.save_checkpoint(export, trainer.model_config, final, head="reward")
    trainer.tokenizer.save(export)
    with open(os.path.join(export, "config.json")) as f:
        assert json.load(f)["architectures"][0].endswith("ForSequenceClassification")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        export, dtype=torch.float32
    ).eval()
    for rows, expected in ((chosen, ours[:8]), (rejected, ours[8:])):
        ids, mask = _packed(rows, left=False)
        with torch.no_grad():
            hf = model(
                input_ids=torch.from_numpy(ids.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                position_ids=torch.from_numpy(np.clip(np.cumsum(mask, -1) - 1, 0, None).astype(np.int64)),
            ).logits[:, 0]
        np.testing.assert_allclose(hf.numpy(), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(independent_scores(export, chosen), ours[:8], rtol=0, atol=1e-5)


def _packed(rows, left=True):
    """Each row's real prompt + response tokens without gaps, padded on one side with the pad
    id 0 (HF finds a sequence's last token by the pad id)."""
    prompt_ids, prompt_mask, response_ids, response_mask = (np.asarray(x) for x in rows)
    seqs = [
        np.concatenate([p[m > 0], r[k > 0]])
        for p, m, r, k in zip(prompt_ids, prompt_mask, response_ids, response_mask, strict=True)
    ]
    width = max(len(s) for s in seqs)
    ids, mask = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    return ids, mask


def test_grpo_rewarded_by_the_trained_reward_model(rm_run, tfds_dir):
    step_dir = os.path.join(rm_run["workdir"], "checkpoints", "main", "8")
    config = load_config("grpo_arithmetic")
    config.data.data_dir = tfds_dir
    config.sft.steps = 0
    config.train.steps = 2
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)
    config.aux_models = {"rm": {"checkpoint": step_dir, "head": "reward"}}
    config.rewards = {"rm": 1.0, "exact_match": 0.0}  # the verifier logged, not rewarded
    workdir = str(rm_run["tmp"] / "grpo")
    jrl.Trainer(config, workdir).fit()
    main = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert len(main) == 2
    for r in main:
        assert np.isfinite(r["reward/rm"]) and r["reward_mean"] == pytest.approx(r["reward/rm"], abs=1e-5)
        assert "reward/exact_match" in r


def test_reward_ensemble_job_trains_disjoint_members_and_feeds_grpo(tfds_dir, tmp_path):
    """`job='reward_ensemble'`: two smoke reward models on disjoint slices of the training pairs,
    and an ensemble.json a GRPO config takes as its reward source (UWO of the two)."""
    config = load_config("reward_model_arithmetic", "smoke")
    config.data.data_dir = tfds_dir
    config.sft.steps = 0
    config.train.update(steps=2, checkpoint_every=2)
    config.eval.update(every=0, num_prompts=8, batch_size=8)
    config.job = "reward_ensemble"
    config.ensemble.update(members=2, split="subset", records=32)
    spec = train_reward_ensemble(config, str(tmp_path / "ens"))
    assert sorted(spec["aux_models"]) == ["rm0", "rm1"]
    assert spec["reward_ensembles"]["rm"] == {"members": "rm0,rm1", "combine": "mean_minus_var", "coef": 0.5}
    snapshots = [json.load(open(tmp_path / "ens" / f"member{k}" / "config.json")) for k in range(2)]
    assert [(s["seed"], s["data"]["train_offset"], s["data"]["train_records"]) for s in snapshots] == [
        (0, 0, 32),
        (1, 32, 32),
    ]
    grpo = reward_ensemble_source(load_config("grpo_arithmetic", "smoke"), str(tmp_path / "ens"))
    models = load_aux_models(grpo.aux_models)
    sources = RewardSources(grpo.rewards, models, grpo.reward_ensembles)
    assert sorted(sources.ensembles) == ["rm"] and sorted(sources.weights) == ["exact_match", "rm"]
    a, b = (np.asarray(jax.tree.leaves(models[m].params["score"])[0]) for m in ("rm0", "rm1"))
    assert not np.array_equal(a, b)


def test_reward_ensemble_job_checks_its_fields_first(tmp_path):
    config = load_config("reward_model_arithmetic", "smoke")
    config.ensemble.update(split="subset", records=0)
    with pytest.raises(jrl.ConfigError, match=r"ensemble\.records=0"):
        train_reward_ensemble(config, str(tmp_path / "ens"))
    config.ensemble.update(split="bootstrap")
    with pytest.raises(jrl.ConfigError, match=r"ensemble\.split='bootstrap'"):
        train_reward_ensemble(config, str(tmp_path / "ens"))
    assert not (tmp_path / "ens").exists()
