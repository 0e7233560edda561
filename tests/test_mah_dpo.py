"""MAH-DPO (jaxrl_llm/algorithms/mah_dpo.py) and the multi-head policy it needs
(`model.lm_heads`): a row's head and the inference mixture by hand, a one-head checkpoint
copied into identical heads, the export of the mixture loading in `transformers` with equal
logits, the objective weights with the spec's golden total, the objectives of the records,
and the build-time check of the head count. The smoke run, micro-batch invariance and the
checkpoint round trip are tests/test_every_algorithm.py's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config
from test_preference_family import loss_of, pairs

import jaxrl_llm as jrl
from jaxrl_llm.algorithms.mah_dpo import objective_pairs
from jaxrl_llm.models.hf import load_checkpoint, save_checkpoint
from jaxrl_llm.models.transformer import CausalLM, init_params
from jaxrl_llm.train.builders import with_lm_heads
from jaxrl_llm.train.steps import with_normalisers


def test_rows_pick_their_head_and_inference_mixes_them(tiny_config):
    config = dataclasses.replace(tiny_config, lm_heads=2, head_weights=(3.0, 1.0))
    params = init_params(config, jax.random.PRNGKey(1))
    assert params["lm_head"].shape == (2, config.d_model, config.vocab_size)
    tokens, mask = jnp.array([[3, 4, 5], [6, 7, 8]]), jnp.ones((2, 3), jnp.int32)
    model = CausalLM(config)

    def logits(heads):
        def run(module, tokens, mask):
            hidden, _ = module.trunk(tokens, jnp.broadcast_to(jnp.arange(3), (2, 3)), mask)
            return hidden, module.logits(hidden, heads)

        return model.apply({"params": params}, tokens, mask, method=run)

    hidden, per_row = logits(jnp.array([1, 0]))
    w = params["lm_head"]
    np.testing.assert_allclose(per_row[0], hidden[0] @ w[1], atol=1e-5)
    np.testing.assert_allclose(per_row[1], hidden[1] @ w[0], atol=1e-5)
    _, mixed = logits(None)
    np.testing.assert_allclose(mixed, hidden @ (0.75 * w[0] + 0.25 * w[1]), atol=1e-5)


def test_checkpoint_heads_are_copies_and_the_export_is_the_mixture(tiny_config, tiny_params, tmp_path):
    import torch
    import transformers

    config, params = with_lm_heads(tiny_config, tiny_params, 2)
    np.testing.assert_array_equal(params["lm_head"][0], tiny_params["lm_head"])
    np.testing.assert_array_equal(params["lm_head"][1], tiny_params["lm_head"])
    # heads trained apart, mixed 0.8 / 0.2 at inference
    params = {**params, "lm_head": params["lm_head"].at[1].add(0.05)}
    config = dataclasses.replace(config, head_weights=(0.8, 0.2))
    save_checkpoint(str(tmp_path), config, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = np.array([[3, 4, 5, 6]])
    theirs = model(torch.tensor(ids)).logits.detach().numpy()
    ours = CausalLM(config).apply({"params": params}, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
    assert np.abs(theirs - np.asarray(ours)).max() < 1e-4
    exported, _ = load_checkpoint(str(tmp_path))
    assert exported.lm_heads == 1


def test_objective_weights_give_the_mean_over_objectives():
    """Spec: head 0's pair is DPO's toy pair (0.620957), head 1's S_θ (−9, −9.5), S_ref (−9.2,
    −9.1) (0.663597): total 0.642277, the mean of the two objectives' means, here with head 0
    holding two copies of its pair (the plain pair mean would be 0.635170)."""
    batch, logp = pairs(
        [[-10.0], [-10.0], [-9.0]],
        [[-12.0], [-12.0], [-9.5]],
        [[-11.0], [-11.0], [-9.2]],
        [[-11.5], [-11.5], [-9.1]],
    )
    batch = batch._replace(extras={"head_ids": jnp.array([0, 0, 1])})
    algorithm = jrl.make_algorithm("mah_dpo")
    weighted, _ = algorithm.transform.update(batch, ())
    np.testing.assert_allclose(weighted.extras["pair_weight"], [0.75, 0.75, 1.5], atol=1e-6)
    loss, _ = loss_of("mah_dpo", with_normalisers(weighted), logp)
    np.testing.assert_allclose(loss, 0.642277, atol=1e-6)
    one, _ = algorithm.transform.update(batch._replace(extras={"head_ids": jnp.array([1, 1, 1])}), ())
    np.testing.assert_allclose(one.extras["pair_weight"], [1.0, 1.0, 1.0])  # one objective: DPO


def test_objectives_of_the_records():
    records = [
        {"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "9", "index": i, "answer": "x"}
        for i in range(3)
    ]
    rows = objective_pairs(2)(records)
    assert [(r["head"], r["chosen"], r["rejected"]) for r in rows] == [
        (0, "1", "9"),
        (1, "2", "2 ="),
        (0, "3", "9"),
    ]
    given = objective_pairs(2)([{**records[0], "objective": 1}])
    assert given[0]["head"] == 1 and given[0]["rejected"] == "9"  # the data's own pair
    with pytest.raises(ValueError, match=r"objective=2 is not one of the 2 heads"):
        objective_pairs(2)([{**records[0], "objective": 2}])


def test_head_count_is_checked_before_training(tfds_dir, tmp_path):
    config = load_config("mah_dpo_arithmetic", "smoke")
    config.data.data_dir = tfds_dir
    config.model.lm_heads = 3
    with pytest.raises(jrl.ConfigError, match=r"algo\.num_objectives=2 but model\.lm_heads=3"):
        jrl.Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_jsonl_pairs_carry_their_objective():
    from jaxrl_llm.data.pipeline import DatasetFieldError, preference_parts

    record = {"prompt": "1+1=", "chosen": "2", "rejected": "3", "objective": "1"}
    assert preference_parts(record, "pairs", 0)[1] == {"chosen": "2", "rejected": "3", "objective": 1}
    with pytest.raises(DatasetFieldError, match=r"record 4: 'objective' must be a non-negative integer"):
        preference_parts({**record, "objective": "x"}, "pairs", 4)
