"""Auxiliary frozen models and rewards from reward models, through the config path.

One smoke PPO run rewarded by a reward-model checkpoint (tests/ext_algorithms/ppo_reward_model.py,
an RM larger than the policy) serves: the reward is the RM's score, the RM stays out of the
checkpoints (their meta records its source and digest), a changed RM is refused on resume, and
the run's orbax step directory loads as a teacher / critic. A second short run uses an ensemble
of two RMs as the reward and that teacher in a pass. The 8-device sharding check runs in a
subprocess (tests/aux_sharding_check.py).
"""

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.train import builders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG_RM = dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=512)  # > the policy
ALPHABET = jrl.base_config().tokenizer.alphabet  # the smoke configs' char tokenizer
RECORDED: list = []  # host Rollouts collected by the 'aux_test_record' strategy


ext = importlib.import_module("ext_algorithms.ppo_reward_model")  # tests/ is on sys.path


@jrl.register_strategy("aux_test_record")
def recording_strategy():
    """group_sampling() that keeps each collected Rollout (to re-score it independently)."""
    inner = jrl.group_sampling()

    def collect(ctx, prompts, rng):
        rollout = inner.collect(ctx, prompts, rng)
        RECORDED.append(rollout)
        return rollout

    return jrl.RolloutStrategy(collect)


def teacher_metric() -> jrl.RolloutTransform:
    def update(batch, state):
        mask = batch.response_mask.astype(jnp.float32)
        lp = batch.extras["teacher_logp/teacher"]
        return jrl.add_metrics(batch, teacher_logp=(lp * mask).sum() / mask.sum()), state

    return jrl.RolloutTransform(init=lambda: (), update=update)


@jrl.register_algorithm("aux_test_grpo_teacher", overwrite=True)
def grpo_teacher():
    """GRPO plus a teacher pass whose token-mean log-prob is logged as `teacher_logp`."""
    base = jrl.grpo(beta=0.0)
    return base._replace(
        passes=base.passes + (jrl.teacher_pass("teacher"),),
        transform=jrl.chain(teacher_metric(), base.transform),
    )


def independent_scores(rm_dir: str, rows) -> np.ndarray:
    """The HF reward model of `rm_dir` on each row's real prompt + response tokens, re-packed
    without gaps and left-padded (not the library's scorer)."""
    cfg, params = jrl.load_checkpoint(rm_dir, head="reward")
    prompt_ids, prompt_mask, response_ids, response_mask = (np.asarray(x) for x in rows)
    seqs = [
        np.concatenate([p[m > 0], r[k > 0]])
        for p, m, r, k in zip(prompt_ids, prompt_mask, response_ids, response_mask, strict=True)
    ]
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :], mask[i, width - len(s) :] = s, 1
    return np.asarray(jrl.RewardModel(cfg).apply({"params": params}, ids, mask))


def rollout_rows(r):
    return r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def ppo_rm_config(tmp, tfds_dir):
    config = ext.configure(load_config("ppo_arithmetic"), tmp, **BIG_RM)
    config.data.data_dir = tfds_dir
    config.eval.every = 0  # before/after evaluations only
    config.rollout.name = "aux_test_record"
    return config


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, tfds_dir):
    tmp = tmp_path_factory.mktemp("rm_run")
    config = ppo_rm_config(tmp, tfds_dir)
    workdir = str(tmp / "run")
    RECORDED.clear()
    trainer = jrl.Trainer(config, workdir)
    trainer.fit()
    return dict(
        config=config,
        trainer=trainer,
        workdir=workdir,
        rm_dir=config.aux_models.rm.checkpoint,
        rollouts=list(RECORDED),
        main=jrl.read_metrics(workdir, phase="main"),
    )


def test_ppo_rewarded_by_reward_model(rm_run):
    main, rollouts, trainer = rm_run["main"], rm_run["rollouts"], rm_run["trainer"]
    assert len(main) == rm_run["config"].train.steps == len(rollouts)
    assert trainer.reward_sources.functions == []  # no verifier scores the rollouts
    for record, rollout in zip(main, rollouts, strict=True):
        scores = independent_scores(rm_run["rm_dir"], rollout_rows(rollout))
        assert scores.std() > 0.1  # a random RM with init_std 0.5 tells rows apart
        # Two float32 computations of scores up to ~10 in size: rounding scales with the largest.
        atol = 1e-5 * np.abs(scores).max()
        np.testing.assert_allclose(rollout.rewards, scores, rtol=1e-4, atol=atol)
        np.testing.assert_allclose(record["reward_mean"], scores.mean(), rtol=1e-4, atol=atol)
        assert record["reward/rm"] == pytest.approx(record["reward_mean"], rel=1e-6)
        assert {k for k in record if k.startswith("reward/")} == {"reward/rm"}
        assert np.isfinite(record["critic_loss"]) and record["grad_norm"] > 0


def test_reward_model_is_not_in_the_checkpoints(rm_run, tmp_path):
    trainer, ckpt_dir = rm_run["trainer"], os.path.join(rm_run["workdir"], "checkpoints", "main")
    ckpt = jrl.Checkpointer(ckpt_dir)
    steps = ckpt.all_steps()
    assert steps == [2, 4]
    # The same state saved without any auxiliary model: what a run without the RM writes.
    with jrl.Checkpointer(str(tmp_path / "baseline")) as baseline:
        baseline.save(4, trainer.final_state, {"phase": "main", "phase_start": 0}, force=True)
    without = dir_bytes(str(tmp_path / "baseline" / "4"))
    rm_bytes = dir_bytes(rm_run["rm_dir"])
    assert rm_bytes > 4 * without  # the RM outweighs the whole train state (policy, critic, Adam)
    for step in steps:  # orbax's file layout varies by some percent between saves of one state
        size = dir_bytes(os.path.join(ckpt_dir, str(step)))
        assert abs(size - without) < 0.25 * without, (step, size, without)
        assert size < without + rm_bytes / 2, (step, size, without, rm_bytes)
    _, meta = ckpt.restore(4)
    ckpt.close()
    assert meta["aux_models"] == {
        "rm": {
            "source": os.path.abspath(rm_run["rm_dir"]),
            "digest": jrl.content_digest(rm_run["rm_dir"]),
            "head": "reward",
        }
    }
    assert trainer.aux_models["rm"].digest == meta["aux_models"]["rm"]["digest"]


def test_changed_reward_model_is_refused_on_resume(rm_run, tmp_path):
    """An interrupted copy of the run (its 'done' step removed) with the RM rewritten in place."""
    config, rm_dir = rm_run["config"], rm_run["rm_dir"]
    workdir = str(tmp_path / "run")
    shutil.copytree(rm_run["workdir"], workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "main", "4"))
    original = str(tmp_path / "rm_original")
    shutil.copytree(rm_dir, original)
    try:
        ext.write_reward_model(rm_dir, config.tokenizer.alphabet, seed=2, **BIG_RM)
        assert jrl.content_digest(rm_dir) != jrl.content_digest(original)
        with pytest.raises(ValueError, match=r"aux_models\.rm.*changed since the checkpoint"):
            jrl.train(config, workdir)
    finally:
        shutil.rmtree(rm_dir)
        shutil.copytree(original, rm_dir)
    RECORDED.clear()
    jrl.train(config, workdir)
    main = jrl.read_metrics(workdir, phase="main")
    assert [r["step"] for r in main] == [1, 2, 3, 4]
    assert len(RECORDED) == 2  # steps 3 and 4 were trained again, from the step-2 checkpoint
    for resumed, first in zip(main[2:], rm_run["main"][2:], strict=True):  # the same trajectory
        assert resumed["reward_mean"] == pytest.approx(first["reward_mean"], rel=1e-4, abs=1e-5)


def test_model_config_from_run_is_the_runs_model(rm_run):
    trainer = rm_run["trainer"]
    assert builders.model_config_from_run(rm_run["workdir"]) == trainer.model_config
    assert builders.model_config_from_run(rm_run["workdir"], "bfloat16").dtype == "bfloat16"
    with pytest.raises(FileNotFoundError, match="config.json"):
        builders.model_config_from_run(os.path.dirname(rm_run["workdir"]))


def test_orbax_step_loads_as_teacher_and_critic(rm_run):
    step_dir = os.path.join(rm_run["workdir"], "checkpoints", "main", "4")
    state = rm_run["trainer"].final_state
    teacher = jrl.load_aux_model("teacher", {"checkpoint": step_dir, "head": "causal_lm"})
    critic = jrl.load_aux_model("critic", {"checkpoint": step_dir, "head": "value"})
    assert teacher.config == rm_run["trainer"].model_config and teacher.head == "causal_lm"
    for model, saved in ((teacher, state.params), (critic, state.critic_params)):
        assert jax.tree.structure(model.params) == jax.tree.structure(saved)
        for got, want in zip(jax.tree.leaves(model.params), jax.tree.leaves(saved), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert model.digest == jrl.content_digest(step_dir)
    with pytest.raises(ValueError, match="head='reward'"):
        jrl.load_aux_model("rm", {"checkpoint": step_dir, "head": "reward"})


def write_ensemble(tmp) -> dict:
    return {
        name: {"checkpoint": ext.write_reward_model(str(tmp / name), ALPHABET, seed=seed), "head": "reward"}
        for name, seed in (("rm_a", 3), ("rm_b", 4))
    }


ENSEMBLES = {
    "ens_mean": {"members": "rm_a,rm_b", "combine": "mean"},
    "ens_min": {"members": "rm_a, rm_b", "combine": "min"},
    "ens_uwo": {"members": "rm_a,rm_b", "combine": "mean_minus_std", "coef": 0.5},
}
WEIGHTS = {"ens_mean": 0.5, "ens_min": 0.25, "ens_uwo": 0.25}


def test_ensemble_combinations_golden(tmp_path):
    specs = write_ensemble(tmp_path)
    aux = {name: jrl.load_aux_model(name, spec) for name, spec in specs.items()}
    rng = np.random.default_rng(0)
    n, p, t, vocab = 6, 5, 4, aux["rm_a"].config.vocab_size
    prompt_mask = (np.arange(p)[None] >= rng.integers(0, p - 1, n)[:, None]).astype(np.int32)
    prompt_ids = rng.integers(3, vocab, (n, p)).astype(np.int32) * prompt_mask
    response_mask = (np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None]).astype(np.int32)
    response_ids = rng.integers(3, vocab, (n, t)).astype(np.int32) * response_mask
    prompts = jrl.PromptBatch(prompt_ids, prompt_mask, np.array([""] * n), np.array([""] * n), np.arange(n))
    sources = jrl.RewardSources(WEIGHTS, aux, ENSEMBLES)
    got = sources(prompts, response_ids, response_mask, [""] * n, np.ones(n, bool))
    rows = (prompt_ids, prompt_mask, response_ids, response_mask)
    a, b = (independent_scores(specs[m]["checkpoint"], rows) for m in ("rm_a", "rm_b"))
    assert np.abs(a - b).min() > 1e-3  # the two members disagree on every row
    golden = {
        "ens_mean": (a + b) / 2,
        "ens_min": np.minimum(a, b),
        "ens_uwo": (a + b) / 2 - 0.5 * np.abs(a - b) / 2,  # population std of two values: |a - b| / 2
    }
    for name, want in golden.items():
        np.testing.assert_allclose(got.per_source[name], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.per_source[f"{name}/rm_a"], a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.per_source[f"{name}/rm_b"], b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.per_source[f"{name}/std"], np.abs(a - b) / 2, rtol=1e-5, atol=1e-5)
    total = sum(w * golden[k] for k, w in WEIGHTS.items())
    np.testing.assert_allclose(got.rewards, total, rtol=1e-5, atol=1e-5)


def test_ensemble_reward_and_orbax_teacher_train(rm_run, tmp_path, tfds_dir):
    """GRPO rewarded by three combinations of a two-RM ensemble, with the PPO run's final
    policy (its orbax step directory) as a teacher in a pass."""
    config = load_config("grpo_arithmetic")
    config.data.data_dir = tfds_dir
    config.rewards, config.reward_ensembles = WEIGHTS, ENSEMBLES
    config.algo = {"name": "aux_test_grpo_teacher"}
    config.aux_models = {
        **write_ensemble(tmp_path),
        "teacher": {
            "checkpoint": os.path.join(rm_run["workdir"], "checkpoints", "main", "4"),
            "head": "causal_lm",
        },
    }
    config.rollout.name = "aux_test_record"
    config.sft.steps, config.train.steps, config.eval.every = 0, 2, 0
    RECORDED.clear()
    jrl.train(config, str(tmp_path / "run"))
    main = jrl.read_metrics(str(tmp_path / "run"), phase="main")
    assert len(main) == 2 == len(RECORDED)
    policy = rm_run["trainer"].final_state.params
    for record, rollout in zip(main, RECORDED, strict=True):
        for name in ENSEMBLES:
            for key in ("", "/rm_a", "/rm_b", "/std"):
                assert np.isfinite(record[f"reward/{name}{key}"]), (name, key)
        want = sum(w * record[f"reward/{k}"] for k, w in WEIGHTS.items())
        assert record["reward_mean"] == pytest.approx(want, rel=1e-4, abs=1e-5)
        out = jrl.policy_outputs(
            rm_run["trainer"].model_config, policy, *rollout_rows(rollout), temperature=1.0
        )
        mask = np.asarray(rollout.response_mask, np.float32)
        teacher_logp = float((np.asarray(out.logp) * mask).sum() / mask.sum())
        assert record["teacher_logp"] == pytest.approx(teacher_logp, rel=1e-4, abs=1e-5)


def test_reward_source_errors(tmp_path):
    aux = {"rm_a": jrl.load_aux_model("rm_a", write_ensemble(tmp_path)["rm_a"])}
    ensembles = {"ens": {"members": "rm_a,rm_x"}}
    with pytest.raises(ValueError) as err:
        jrl.RewardSources({"nope": 1.0}, aux, ensembles)
    message = str(err.value)
    assert "'nope'" in message and "config field rewards" in message
    assert "exact_match" in message and "rm_a" in message and "ens" in message
    with pytest.raises(
        ValueError, match=r"reward_ensembles\.ens\.members: 'rm_x' is not an auxiliary reward model"
    ):
        jrl.RewardSources({"ens": 1.0}, aux, ensembles)
    with pytest.raises(ValueError, match=r"reward_ensembles\.solo\.members=.*at least two"):
        jrl.RewardSources({"solo": 1.0}, aux, {"solo": {"members": "rm_a"}})
    with pytest.raises(ValueError, match=r"reward_ensembles\.e\.combine='max'"):
        jrl.RewardSources({"e": 1.0}, aux, {"e": {"members": "rm_a,rm_a", "combine": "max"}})
    with pytest.raises(ValueError, match="config.rewards is empty"):
        jrl.RewardSources({}, aux)


def test_aux_reward_model_is_sharded_on_a_mesh(tmp_path, tfds_dir):
    """tests/aux_sharding_check.py: a Trainer on a 2x2x2 mesh of 8 fake devices."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "aux_sharding_check.py"),
            str(tmp_path),
            tfds_dir,
            jax.config.jax_compilation_cache_dir,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    specs = report["specs"]
    for name in ("trunk/layers_0/mlp/gate_proj", "trunk/layers_0/attn/q_proj", "trunk/embed"):
        assert not specs[name]["replicated"], (name, specs[name])
    assert specs["trunk/layers_0/mlp/gate_proj"]["spec"] == "P('fsdp', 'tensor')"
    assert np.std(report["single_scores"]) > 0.1
    np.testing.assert_allclose(report["sharded_scores"], report["single_scores"], rtol=1e-5, atol=1e-6)
