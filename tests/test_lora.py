"""Memory savers: LoRA adapters on a frozen base (jaxrl_llm/lora.py) and block rematerialisation.

LoRA: the initial model equals the base; a GRPO step changes only the adapters and keeps
optimiser state only for them; the reference (adapters disabled) is the base; merged weights
export to a directory `transformers` loads with the same logits; a smoke run through the config
path trains and resumes. Remat: same loss and gradients, smaller compiled temporaries.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P
from run_helpers import load_config

from jaxrl_llm import lora, sharding
from jaxrl_llm.algorithms import make_algorithm
from jaxrl_llm.models.config import LORA_TARGETS, LoraConfig, TransformerConfig
from jaxrl_llm.models.hf import load_checkpoint, save_checkpoint
from jaxrl_llm.models.transformer import CausalLM, init_params, remat_compiler_options
from jaxrl_llm.rewards import register_reward
from jaxrl_llm.train.forward import policy_outputs
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.steps import TrainState, make_step_fns
from jaxrl_llm.train.trainer import Trainer
from jaxrl_llm.types import Rollout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
PROMPTS, GROUP, PROMPT_LEN, RESPONSE_LEN = 4, 4, 6, 5


@pytest.fixture(scope="module")
def lora_config(tiny_config):
    return dataclasses.replace(tiny_config, lora=LORA)


@pytest.fixture(scope="module")
def lora_params(lora_config):
    return init_params(lora_config, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def trained_params(lora_config, lora_params):
    """Adapters as after training: every B random (nonzero), so the adapters change the model."""
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(lora_params)
    for path, value in flat.items():
        if path[-1].endswith("_lora_b"):
            flat[path] = jnp.asarray(rng.normal(0.0, 0.05, value.shape), value.dtype)
    return traverse_util.unflatten_dict(flat)


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 97, (3, 8)).astype(np.int32)
    mask = np.ones((3, 8), np.int32)
    mask[0, :3] = 0  # one left-padded row
    return ids * mask, mask


def _logits(config, params):
    ids, mask = _batch()
    return np.asarray(jax.jit(CausalLM(config).apply)({"params": params}, ids, mask))


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params))


def test_adapters_at_init_leave_the_base_model_unchanged(tiny_config, tiny_params, lora_config, lora_params):
    flat, base = _flat(lora_params), _flat(tiny_params)
    adapters = {path: value for path, value in flat.items() if lora.is_adapter(path)}
    assert len(adapters) == 2 * len(LORA_TARGETS) * tiny_config.num_layers
    for path, value in base.items():  # the same base weights as a model without LoRA
        np.testing.assert_array_equal(flat[path], value)
    attn = lora_params["trunk"]["layers_0"]["attn"]
    assert attn["q_proj_lora_a"].shape == (64, LORA.rank)  # A: [*in, r]; B: [r, *out]
    assert attn["q_proj_lora_b"].shape == (LORA.rank, 4, 16)
    assert attn["o_proj_lora_a"].shape == (4, 16, LORA.rank)
    assert np.all(attn["q_proj_lora_b"] == 0) and np.std(attn["q_proj_lora_a"]) > 0
    np.testing.assert_array_equal(_logits(lora_config, lora_params), _logits(tiny_config, tiny_params))


def test_reference_is_the_base_with_adapters_disabled(tiny_config, tiny_params, lora_config, trained_params):
    base = lora.base_params(trained_params)
    assert (
        base["trunk"]["layers_0"]["mlp"]["up_proj"] is trained_params["trunk"]["layers_0"]["mlp"]["up_proj"]
    )
    assert jax.tree.structure(base) == jax.tree.structure(tiny_params)
    adapted = _logits(lora_config, trained_params)
    assert np.abs(adapted - _logits(tiny_config, tiny_params)).max() > 1e-3
    np.testing.assert_array_equal(_logits(lora_config, base), _logits(tiny_config, tiny_params))


def _rollout() -> Rollout:
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(1, 97, (PROMPTS, PROMPT_LEN)).astype(np.int32)
    rows = PROMPTS * GROUP
    response_ids = rng.integers(1, 97, (rows, RESPONSE_LEN)).astype(np.int32)
    response_mask = (np.arange(RESPONSE_LEN) < rng.integers(1, RESPONSE_LEN + 1, rows)[:, None]).astype(
        np.int32
    )
    return Rollout(
        prompt_ids=np.repeat(prompt_ids, GROUP, axis=0),
        prompt_mask=np.ones((rows, PROMPT_LEN), np.int32),
        response_ids=response_ids * response_mask,
        response_mask=response_mask,
        group_ids=np.repeat(np.arange(PROMPTS, dtype=np.int32), GROUP),
        logp_behav=np.zeros((rows, RESPONSE_LEN), np.float32),
        rewards=rng.integers(0, 2, rows).astype(np.float32),
    )


def test_grpo_step_trains_only_the_adapters(tiny_config, tiny_params, lora_config, lora_params):
    """Two updates (2 micro-batches each, adapter dropout on): the base stays bit-identical,
    every adapter moves, the optimiser state covers only the adapters, and the reference
    log-probs of the KL term are the base model's."""
    algorithm = make_algorithm("grpo", beta=0.04)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    prepare, update = make_step_fns(
        algorithm, lora_config, optimizer, None, temperature=1.0, microbatches=2, recompute_old_logp=True
    )
    trainable, frozen = lora.split_trainable(lora_config, lora_params)
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=jax.tree.map(jnp.copy, lora_params),  # `update` donates the state's buffers
        opt_state=optimizer.init(trainable),
        algo_state=algorithm.transform.init(),
        rng=jax.random.PRNGKey(0),
    )
    num_adapter = lora.num_elements(trainable)
    assert num_adapter == lora.num_elements(lora_params) - lora.num_elements(tiny_params)
    assert lora.num_elements(state.opt_state) == 2 * num_adapter + 1  # Adam's mu, nu and count

    rollout = _rollout()
    batch, state = prepare(state, rollout)
    base = policy_outputs(
        tiny_config,
        tiny_params,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.response_ids,
        rollout.response_mask,
        1.0,
    )
    np.testing.assert_allclose(batch.logp_ref, base.logp, atol=1e-6)
    first_rng = state.rng
    for _ in range(2):
        state, metrics, finite = update(state, batch, np.arange(PROMPTS * GROUP))
        assert bool(finite) and np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(state.rng, first_rng)  # dropout keys come from the state's rng
    before, after = _flat(lora_params), _flat(state.params)
    assert before.keys() == after.keys()
    for path in before:
        if lora.is_adapter(path):
            assert not np.array_equal(before[path], after[path]), path
        else:
            np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(optimizer.init(trainable))


def test_adapters_and_their_optimizer_state_are_sharded_like_their_weights(lora_config, lora_params):
    """A [*in, r] takes W's input axes, B [r, *out] its output axes, the rank stays whole; Adam's
    moments of the adapters follow them (a one-device mesh keeps the specs the rules give)."""
    mesh = sharding.make_mesh(sharding.mesh_config(1, 1, 1))
    p = sharding.Partitioning(mesh, sharding.validate_rules(sharding.DEFAULT_RULES))
    trainable, _ = lora.split_trainable(lora_config, lora_params)
    params = sharding.param_shardings(lora_params, lora_config, p)["trunk"]["layers_0"]
    opt = sharding.optimizer_shardings(optax.adam(1e-3).init(trainable), trainable, lora_config, p)
    mu = opt[0].mu["trunk"]["layers_0"]
    expected = {
        ("attn", "q_proj_lora_a"): P("fsdp", None),
        ("attn", "q_proj_lora_b"): P(None, "tensor", None),
        ("attn", "o_proj_lora_a"): P("tensor", None, None),
        ("attn", "o_proj_lora_b"): P(None, "fsdp"),
        ("mlp", "down_proj_lora_a"): P("tensor", None),
        ("mlp", "up_proj_lora_b"): P(None, "tensor"),
    }
    for (module, name), spec in expected.items():
        assert params[module][name].spec == spec, name
        assert mu[module][name].spec == spec, name


def test_merged_export_loads_in_transformers(lora_config, trained_params, tmp_path):
    import torch
    import transformers

    base_config = dataclasses.replace(lora_config, lora=None)
    adapted = _logits(lora_config, trained_params)
    merged = lora.merge_adapters(lora_config, trained_params)
    assert jax.tree.structure(merged) == jax.tree.structure(lora.base_params(trained_params))
    np.testing.assert_allclose(_logits(base_config, merged), adapted, atol=1e-5)
    restarted = lora.merge_adapters(lora_config, trained_params, keep_adapters=True)  # B = 0 again
    np.testing.assert_allclose(_logits(lora_config, restarted), adapted, atol=1e-5)

    save_checkpoint(str(tmp_path), lora_config, trained_params)  # merges
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids, mask = _batch()
    with torch.no_grad():
        positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)
        theirs = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions.astype(np.int64)),
        ).logits.numpy()
    real = mask == 1
    assert np.abs(theirs - adapted)[real].max() < 1e-5
    config, reloaded = load_checkpoint(str(tmp_path))
    assert config.lora is None
    for path, value in _flat(merged).items():
        np.testing.assert_array_equal(_flat(reloaded)[path], value)
    # Loading as a LoRA model: the checkpoint becomes the frozen base, with fresh adapters.
    _, with_adapters = load_checkpoint(str(tmp_path), lora=LORA)
    np.testing.assert_allclose(_logits(lora_config, with_adapters), adapted, atol=1e-5)


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(target_modules=("q_proj", "qkv")), r"\['qkv'\].*'q_proj', 'k_proj', 'v_proj', 'o_proj'"),
        (dict(rank=0), "model.lora.rank=0"),
        (dict(dropout=1.0), "model.lora.dropout"),
    ],
)
def test_lora_config_errors_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**{"rank": 4, **fields})


def test_bad_remat_policy_lists_the_valid_ones(tiny_config):
    with pytest.raises(ValueError, match=r"model.remat='dot'.*\('none', 'full', 'dots'\)"):
        dataclasses.replace(tiny_config, remat="dot")


def test_remat_keeps_loss_and_gradients_and_lowers_memory():
    """Same loss and gradients with and without rematerialisation, and XLA's compiled temporary
    buffers of the gradient step shrink ('full' keeps only each block's input). On XLA:CPU this
    needs `remat_compiler_options` (without it the temporaries only went from 61 to 56 MB)."""
    config = TransformerConfig(
        vocab_size=97, d_model=64, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=256
    )
    params = init_params(config, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (4, 128), 1, 97)
    mask = jnp.ones_like(ids)

    def grad_step(config):
        def loss(params):
            logits = CausalLM(config).apply({"params": params}, ids, mask)
            logp = jax.nn.log_softmax(logits[:, :-1])
            return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

        return jax.jit(jax.value_and_grad(loss), compiler_options=remat_compiler_options(config))

    results, temp_bytes = {}, {}
    for policy in ("none", "dots", "full"):
        step = grad_step(dataclasses.replace(config, remat=policy))
        temp_bytes[policy] = step.lower(params).compile().memory_analysis().temp_size_in_bytes
        results[policy] = step(params)
    for policy in ("dots", "full"):
        np.testing.assert_allclose(results[policy][0], results["none"][0], rtol=1e-6)
        for got, want in zip(
            jax.tree.leaves(results[policy][1]), jax.tree.leaves(results["none"][1]), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert temp_bytes["full"] < 0.5 * temp_bytes["none"], temp_bytes
    assert temp_bytes["dots"] < 0.6 * temp_bytes["none"], temp_bytes


@register_reward("lora_test_short")
def short_completion(*, prompt, completion, answer, finished):
    """1 for a response that stops within 3 characters: a reward a random policy earns sometimes."""
    return float(finished and len(completion) <= 3)


def _smoke_config(data_dir, **lora_fields):
    config = load_config("grpo_arithmetic")
    config.data.data_dir = data_dir
    config.algo.beta = 0.04  # a KL term: the reference pass runs on the base model
    config.rewards = {"lora_test_short": 1.0}
    config.model.lora.update(lora_fields)
    config.train.steps = 3
    config.sft.update(steps=2, eval_every=0)
    config.eval.update(every=0, pass_k=0)  # fewer samplers to compile
    return config


def test_lora_smoke_run_through_the_config(tfds_dir, tmp_path):
    """`--config.model.lora.rank=4` on the smoke config: SFT then GRPO train adapters only (the
    SFT adapters are merged into the base when GRPO starts), there is no reference copy, and a
    rerun resumes from the finished checkpoint with the same params."""
    config = _smoke_config(tfds_dir, rank=4, dropout=0.05)
    trainer = Trainer(config, str(tmp_path))
    start = _flat(trainer.init_params)  # before training: `update` donates the state's buffers
    trainer.fit()
    state = trainer.final_state
    assert state.ref_params is None and trainer.model_config.lora == LoraConfig(rank=4, dropout=0.05)
    trainable, _ = lora.split_trainable(trainer.model_config, state.params)
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]  # Adam's mu and nu
    assert lora.num_elements(moments) == 2 * lora.num_elements(trainable)
    main = read_metrics(str(tmp_path / "metrics.jsonl"), phase="main")
    assert len(main) == 3 and all(np.isfinite(r["kl"]) and r["grad_norm"] > 0 for r in main)
    for phase in ("sft", "main"):  # one compile each, dropout keys and all
        assert all(fn._cache_size() == 1 for fn in trainer.step_fns[phase]), phase
    end = _flat(state.params)
    assert all(not np.array_equal(start[p], end[p]) for p in start if p[-1].endswith("_lora_b"))

    resumed = Trainer(config, str(tmp_path))
    resumed.fit()
    for path, value in _flat(resumed.final_state.params).items():
        np.testing.assert_array_equal(value, end[path])
