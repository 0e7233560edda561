"""On-policy distillation (jaxrl_llm/algorithms/distill.py): the reverse-KL advantages and the
importance-sampling loss against hand computations, zero loss and gradient when the teacher is
the student, and a teacher over another vocabulary refused with the config field named. The
teacher is a small random HF checkpoint loaded as an auxiliary model (`write_teacher`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrl_llm as jrl
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.algorithms.distill import reverse_kl_advantages
from jaxrl_llm.models.auxiliary import load_aux_model
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.train.trainer import Trainer
from jaxrl_llm.types import ModelOutputs, PassContext, Rollout

L2 = math.log(2.0)
SHAPE = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)


def write_teacher(path, alphabet, seed=1, params=None, **shape) -> str:
    """A causal-LM HF checkpoint over the char tokenizer of `alphabet`: random (PRNGKey(seed)),
    or `params` (e.g. the policy's own). For config.aux_models.teacher = {checkpoint: path,
    head: 'causal_lm'}."""
    tok = jrl.char_tokenizer(alphabet)
    ids = dict(eos_token_id=tok.eos_ids, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id)
    cfg = jrl.TransformerConfig(vocab_size=tok.vocab_size, init_std=0.5, **ids, **{**SHAPE, **shape})
    params = jrl.init_params(cfg, jax.random.PRNGKey(seed)) if params is None else params
    jrl.save_checkpoint(path, cfg, params, head="causal_lm")
    return path


def hand_rollout(logp_behav, teacher, mask):
    b, t = np.shape(mask)
    return Rollout(
        prompt_ids=jnp.zeros((b, 2), jnp.int32),
        prompt_mask=jnp.ones((b, 2), jnp.int32),
        response_ids=jnp.zeros((b, t), jnp.int32),
        response_mask=jnp.asarray(mask, jnp.int32),
        group_ids=jnp.arange(b, dtype=jnp.int32),
        logp_behav=jnp.asarray(logp_behav, jnp.float32),
        rewards=jnp.zeros(b),
        extras={"teacher_logp/teacher": jnp.asarray(teacher, jnp.float32)},
    )


def test_reverse_kl_advantages_golden():
    # student log [0.5, 0.2], teacher log [0.25, 0.4]: d = [log 2, −log 2] -> A = −d = [−0.6931, 0.6931];
    # γ = 1: A_0 = −(d_0 + d_1) = 0, A_1 = 0.6931; the padded slot is 0 either way; coef scales.
    student, teacher = jnp.log(jnp.asarray([[0.5, 0.2, 0.9]])), jnp.log(jnp.asarray([[0.25, 0.4, 0.1]]))
    mask = [[1, 1, 0]]
    np.testing.assert_allclose(reverse_kl_advantages(student, teacher, mask), [[-L2, L2, 0]], atol=1e-6)
    np.testing.assert_allclose(
        reverse_kl_advantages(student, teacher, mask, discount=1.0), [[0, L2, 0]], atol=1e-6
    )
    np.testing.assert_allclose(
        reverse_kl_advantages(student, teacher, mask, coef=0.5), [[-L2 / 2, L2 / 2, 0]], atol=1e-6
    )


def test_importance_sampling_loss_and_gradient_golden():
    # Student (sampler) probs [0.5, 0.2], teacher [0.25, 0.1] on the two loss tokens: d = [log 2, log 2],
    # A = [−log 2, −log 2]; reverse KL metric = log 2. The current policy moved token 1 up by log 2:
    # r = exp(logp − logp_behav) = [1, 2]; l_t = −A_t r_t = [log 2, 2 log 2]; token mean 1.5 log 2 = 1.039721;
    # d loss / d logp_t = −A_t r_t / 2 = [0.346574, 0.693147] (0 on the padded slot).
    algo = make_algorithm("on_policy_distill")
    behav = jnp.log(jnp.asarray([[0.5, 0.2, 1.0]]))
    batch = hand_rollout(behav, jnp.log(jnp.asarray([[0.25, 0.1, 0.3]])), [[1, 1, 0]])
    batch, state = algo.transform.update(batch, algo.transform.init())
    np.testing.assert_allclose(batch.advantages, [[-L2, -L2, 0]], atol=1e-6)
    np.testing.assert_allclose(batch.metrics["distill/reverse_kl"], L2, atol=1e-6)
    np.testing.assert_array_equal(batch.logp_old, batch.logp_behav)  # the ratio is against the sampler
    logp = behav + jnp.asarray([[0.0, L2, 0.0]])

    def loss(lp):
        return algo.objective(ModelOutputs(logp=lp, entropy=jnp.zeros_like(lp)), batch, state)

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    np.testing.assert_allclose(value, 1.5 * L2, atol=1e-5)
    np.testing.assert_allclose(grad, [[L2 / 2, L2, 0]], atol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0  # no clipping by default (tinker's importance_sampling)
    assert [p.name for p in algo.passes] == ["teacher/teacher"]
    assert [p.name for p in make_algorithm("on_policy_distill", student="old").passes] == [
        "teacher/teacher",
        "old_logp",
    ]
    with pytest.raises(ValueError, match="student='sampler'"):
        make_algorithm("on_policy_distill", student="sampler")


ALPHABET = "0123456789+="


def _student_batch(cfg, params, seed=0):
    rng = np.random.default_rng(seed)
    b, p, t = 4, 3, 5
    mask = np.ones((b, t), np.int32)
    mask[1, 3:] = 0
    batch = Rollout(
        prompt_ids=jnp.asarray(rng.integers(3, cfg.vocab_size, (b, p)), jnp.int32),
        prompt_mask=jnp.ones((b, p), jnp.int32),
        response_ids=jnp.asarray(rng.integers(3, cfg.vocab_size, (b, t)), jnp.int32),
        response_mask=jnp.asarray(mask),
        group_ids=jnp.arange(b, dtype=jnp.int32) // 2,
        rewards=jnp.zeros(b),
    )
    logp = jax.jit(lambda p, b: batch_policy_outputs(cfg, p, b, 1.0).logp)(params, batch)
    return batch._replace(logp_behav=logp)


def _prepared(algo, params, teacher, batch):
    """The algorithm's passes and transform, jitted as in the trainer's `prepare`."""

    @jax.jit
    def prepare(params, teacher_params, batch):
        ctx = PassContext(
            params, None, None, {"teacher": teacher._replace(params=teacher_params)}, None, None
        )
        for p in algo.passes:
            batch = p.run(ctx, batch)
        return algo.transform.update(batch, algo.transform.init())

    return prepare(params, teacher.params, batch)


def _loss_and_grad(algo, cfg, params, batch, state):
    @jax.jit
    def loss_and_grad_norm(params, batch):
        def loss(params):
            return algo.objective(batch_policy_outputs(cfg, params, batch, 1.0), batch, state)[0]

        value, grad = jax.value_and_grad(loss)(params)
        return value, optax.global_norm(grad)

    value, grad_norm = loss_and_grad_norm(params, batch)
    return float(value), float(grad_norm)


def test_teacher_equal_to_the_student_gives_zero_loss_and_gradient(tmp_path):
    policy_dir = write_teacher(str(tmp_path / "self"), ALPHABET, seed=0)
    cfg, params = jrl.load_checkpoint(policy_dir)  # the student; the same files are the teacher
    algo = make_algorithm("on_policy_distill")
    same = load_aux_model("teacher", {"checkpoint": policy_dir, "head": "causal_lm"})
    batch, state = _prepared(algo, params, same, _student_batch(cfg, params))
    np.testing.assert_allclose(batch.advantages, 0.0, atol=1e-6)
    loss, grad_norm = _loss_and_grad(algo, cfg, params, batch, state)
    assert abs(loss) < 1e-6 and grad_norm < 1e-5
    # a different (random) teacher: a non-zero signal, so the check above is not vacuous
    other = load_aux_model(
        "teacher", {"checkpoint": write_teacher(str(tmp_path / "other"), ALPHABET), "head": "causal_lm"}
    )
    batch, state = _prepared(algo, params, other, _student_batch(cfg, params))
    loss, grad_norm = _loss_and_grad(algo, cfg, params, batch, state)
    assert float(batch.metrics["distill/reverse_kl"]) != 0.0 and grad_norm > 1e-3


def test_teacher_with_another_vocabulary_is_refused(tmp_path, tfds_dir):
    # By the pass's check when the trainer is built: before any file is written.
    from test_microbatch_invariance import _config

    from jaxrl_llm.train.validation import validate_passes

    cfg, _ = jrl.load_checkpoint(write_teacher(str(tmp_path / "student"), ALPHABET, seed=0))
    path = write_teacher(str(tmp_path / "teacher"), ALPHABET + "abc")
    teacher = load_aux_model("teacher", {"checkpoint": path, "head": "causal_lm"})
    algo = make_algorithm("on_policy_distill")
    message = r"config field aux_models\.teacher\.checkpoint=.*vocabulary of 18 tokens.*has 15"
    with pytest.raises(ValueError, match=message):
        validate_passes(algo, cfg, {"teacher": teacher})
    config = _config("on_policy_distill", tfds_dir, tmp_path)
    config.aux_models = {"teacher": {"checkpoint": path, "head": "causal_lm"}}
    with pytest.raises(ValueError, match=r"config field aux_models\.teacher\.checkpoint=.*vocabulary of 18"):
        Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
