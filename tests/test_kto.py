"""KTO (jaxrl_llm/algorithms/kto.py) and its unpaired data (pipeline.unpaired_dataset), plus the
JSON-lines preference formats of the paired pipeline:

* the objective on hand-built unpaired batches: the spec's goldens (§4), a hand-computed case,
  the clamp of z0 at 0, no gradient through z0, finiteness at |r| = 1e3, and 1 vs 4
  micro-batches through the trainer's update (z0 through `Algorithm.statistics`);
* the data: mismatched KL pairs (row i's KL completion is row i − 1's, cyclic), the synthetic
  labels, TRL-format JSONL records (prompt/completion/label; prompt/chosen/rejected, chat
  messages), the class-balance warning and the errors for malformed records;
* `configs/kto_arithmetic.py:smoke` end to end through `jrl.Trainer(...).fit()`.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.algorithms.kto import kto_objective
from jaxrl_llm.data import pipeline
from jaxrl_llm.data.sources import DatasetFieldError, final_answer, make_source, record_format
from jaxrl_llm.data.tokenizer import char_tokenizer
from jaxrl_llm.train.config import ARITHMETIC_ALPHABET
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.types import ModelOutputs, PreferenceBatch

FAST_COMPILE = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def unpaired(policy, ref, kl_policy, kl_ref, labels):
    """An unpaired PreferenceBatch (one completion token per row: S = that token's log-prob)
    with its ModelOutputs: completions' policy log-probs, then the KL rows'."""
    col = lambda x: jnp.asarray(x, jnp.float32)[:, None]  # noqa: E731
    b = len(labels)
    batch = PreferenceBatch(
        prompt_ids=jnp.zeros((b, 2), jnp.int32),
        prompt_mask=jnp.ones((b, 2), jnp.int32),
        chosen_ids=jnp.zeros((b, 1), jnp.int32),
        chosen_mask=jnp.ones((b, 1), jnp.int32),
        rejected_ids=jnp.zeros((b, 1), jnp.int32),
        rejected_mask=jnp.ones((b, 1), jnp.int32),
        ref_chosen_logps=col(ref),
        ref_rejected_logps=col(kl_ref),
        extras={"label": jnp.asarray(labels, jnp.float32)},
    )
    return ModelOutputs(logp=jnp.concatenate([col(policy), col(kl_policy)])), batch


def run(objective, outputs, batch):
    loss, metrics = objective(outputs, with_normalisers(batch), None)
    return float(loss), {k: float(v) for k, v in metrics.items()}


# ---- the objective ---------------------------------------------------------------------------------


def test_spec_goldens():
    # Spec §4: β 0.1, z0 0.2: desirable r = 1.0 -> 0.480011, undesirable r = −0.5 -> 0.482507.
    # z0 = mean of the mismatched pairs' log-ratios [0.1, 0.3] = 0.2 (S_θ(y') − S_ref(y')).
    kl = dict(kl_policy=[-4.9, -4.7], kl_ref=[-5.0, -5.0])
    objective = kto_objective()
    loss, m = run(objective, *unpaired([-9.0, -9.0], [-10.0, -10.0], **kl, labels=[1, 1]))
    np.testing.assert_allclose(loss, 0.480011, atol=1e-6)
    np.testing.assert_allclose(m["kl"], 0.2, atol=1e-6)
    loss, m = run(objective, *unpaired([-10.5, -10.5], [-10.0, -10.0], **kl, labels=[0, 0]))
    np.testing.assert_allclose(loss, 0.482507, atol=1e-6)
    loss, m = run(objective, *unpaired([-9.0, -10.5], [-10.0, -10.0], **kl, labels=[1, 0]))
    np.testing.assert_allclose(loss, 0.481259, atol=1e-6)  # the mean of the two
    np.testing.assert_allclose([m["reward_desirable"], m["reward_undesirable"]], [0.1, -0.05], atol=1e-6)
    assert m["reward_accuracy"] == 1.0 and m["desirable_fraction"] == 0.5


def test_hand_computed_case():
    # β 0.5, λ_D 2, λ_U 1. Mismatched pairs ρ' = [1.0, −0.2, 0.6, 0.2] -> z0 = 1.6 / 4 = 0.4.
    #   desirable   r =  1.4: 2 · (1 − σ(0.5 · ( 1.4 − 0.4))) = 2 · (1 − σ(0.5)) = 0.755081
    #   undesirable r =  2.4: 1 · (1 − σ(0.5 · (0.4 − 2.4))) = 1 − σ(−1)     = 0.731059
    #   desirable   r = −1.6: 2 · (1 − σ(0.5 · (−1.6 − 0.4))) = 2 · σ(1)     = 1.462117
    #   undesirable r = −0.6: 1 · (1 − σ(0.5 · (0.4 + 0.6)))  = 1 − σ(0.5)  = 0.377541
    # loss = 3.325798 / 4 = 0.831449. Rewards β r: desirable (0.7 − 0.8) / 2 = −0.05, undesirable
    # (1.2 − 0.3) / 2 = 0.45; on the label's side of z0: rows 0 and 3 -> accuracy 0.5.
    expected = (2 * (1 - sigmoid(0.5)) + sigmoid(1.0) + 2 * sigmoid(1.0) + 1 - sigmoid(0.5)) / 4
    assert abs(expected - 0.831449) < 1e-6
    outputs, batch = unpaired(
        policy=[-8.6, -7.6, -11.6, -10.6],
        ref=[-10.0, -10.0, -10.0, -10.0],
        kl_policy=[-4.0, -5.2, -4.4, -4.8],
        kl_ref=[-5.0, -5.0, -5.0, -5.0],
        labels=[1, 0, 1, 0],
    )
    loss, m = run(kto_objective(beta=0.5, desirable_weight=2.0), outputs, batch)
    np.testing.assert_allclose(loss, expected, atol=1e-5)
    np.testing.assert_allclose(m["kl"], 0.4, atol=1e-6)
    np.testing.assert_allclose(m["reward_desirable"], -0.05, atol=1e-5)
    np.testing.assert_allclose(m["reward_undesirable"], 0.45, atol=1e-5)
    assert m["reward_accuracy"] == 0.5


def test_z0_clamps_at_zero_and_carries_no_gradient():
    # ρ' = [−1.0, 0.4]: mean −0.3 -> z0 = 0; desirable r = 0 -> 1 − σ(0) = 0.5.
    outputs, batch = unpaired([-3.0, -3.0], [-3.0, -3.0], [-6.0, -4.6], [-5.0, -5.0], labels=[1, 1])
    loss, m = run(kto_objective(), outputs, batch)
    assert m["kl"] == 0.0
    np.testing.assert_allclose(loss, 0.5, atol=1e-6)
    # The KL rows (outputs.logp[B:]) reach the loss only through z0: zero gradient, whether z0
    # is clamped or not. The completions' rows get −λ β σ'(β (r − z0)) / B.
    for kl_policy in ([-6.0, -4.6], [-4.0, -4.6]):
        outputs, batch = unpaired([-3.0, -3.0], [-3.0, -3.0], kl_policy, [-5.0, -5.0], labels=[1, 0])
        batch = with_normalisers(batch)
        grad = jax.grad(lambda logp, b=batch: kto_objective()(ModelOutputs(logp=logp), b, None)[0])(
            outputs.logp
        )
        np.testing.assert_array_equal(grad[2:], 0.0)
        assert np.all(np.asarray(grad[:2]) != 0.0)
    # and none through the statistics the trainer supplies either (a total of the KL rows)
    stats = {"kto/kl_sum": jnp.asarray(0.6), "kto/num_desirable": jnp.asarray(1.0)}
    g = jax.grad(
        lambda s: kto_objective()(outputs._replace(stats={**stats, "kto/kl_sum": s}), batch, None)[0]
    )
    assert float(g(jnp.asarray(0.6))) == 0.0


def test_empty_classes_and_extreme_log_ratios_are_finite():
    objective = kto_objective()
    for labels in ([1, 1], [0, 0]):
        for s in (1e3, -1e3):
            outputs, batch = unpaired([s, s], [0.0, 0.0], [s, -s], [0.0, 0.0], labels=labels)
            batch = with_normalisers(batch)
            (loss, metrics), grad = jax.value_and_grad(
                lambda logp, b=batch: objective(ModelOutputs(logp=logp), b, None), has_aux=True
            )(outputs.logp)
            assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
            assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
            empty = "reward_undesirable" if labels[0] else "reward_desirable"
            assert float(metrics[empty]) == 0.0  # no example of that class: 0, not NaN


def test_kto_needs_labels():
    outputs, batch = unpaired([-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], labels=[1, 0])
    with pytest.raises(ValueError, match=r"extras\['label'\].*unpaired_dataset"):
        kto_objective()(outputs, batch._replace(extras={}), None)


def test_microbatch_invariance(tiny_config, tiny_params):
    """z0 is the whole mini-batch's (statistics), so 1 and 4 micro-batches agree."""
    b, p, t = 8, 4, 3
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    prompt_ids = jax.random.randint(keys[0], (b, p), 3, tiny_config.vocab_size)
    chosen_ids = jax.random.randint(keys[1], (b, t), 3, tiny_config.vocab_size)
    chosen_mask = jnp.asarray(np.arange(t)[None, :] < np.array([3, 2, 3, 1, 3, 2, 2, 3])[:, None], jnp.int32)
    rejected_ids, rejected_mask = jnp.roll(chosen_ids, 1, axis=0), jnp.roll(chosen_mask, 1, axis=0)
    prompt_mask = jnp.ones((b, p), jnp.int32)

    def ref(ids, mask):
        return jrl.policy_outputs(tiny_config, tiny_params, prompt_ids, prompt_mask, ids, mask, 1.0).logp

    batch = PreferenceBatch(
        prompt_ids,
        prompt_mask,
        chosen_ids,
        chosen_mask,
        rejected_ids,
        rejected_mask,
        ref_chosen_logps=ref(chosen_ids, chosen_mask),
        ref_rejected_logps=ref(rejected_ids, rejected_mask),
        extras={"label": jnp.asarray([1, 0, 1, 1, 0, 0, 1, 0], jnp.float32)},
    )
    leaves, tree = jax.tree.flatten(tiny_params)  # a policy away from the reference
    noise = jax.random.split(keys[2], len(leaves))
    moved = tree.unflatten(
        [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, noise, strict=True)]
    )
    report = jrl.check_microbatch_invariance(
        "kto", tiny_config, moved, batch, microbatches=4, compiler_options=FAST_COMPILE
    )
    assert report.values["grad_norm"] > 0 and report.values["kl"] > 0  # z0 not clamped: a real test
    assert {"kl", "reward_desirable", "reward_undesirable", "reward_accuracy"} <= set(report.differences)


# ---- the data ----------------------------------------------------------------------------------------


def small_source(n=12):
    return [{"question": f"{i}+{2 * i}=", "answer": f"#### {3 * i}"} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer(ARITHMETIC_ALPHABET)


def test_mismatched_pairs_and_synthetic_labels(tokenizer):
    source = small_source(12)
    kwargs = dict(batch_size=4, max_prompt_len=8, max_target_len=4, seed=3)
    dataset = pipeline.unpaired_dataset(source, tokenizer, **kwargs)
    labels = pipeline.desirable_labels(12, 3, 0.5)
    assert labels.sum() == 6  # exactly ceil(0.5 · 12)
    assert pipeline.desirable_labels(11, 3, 0.5).sum() == 6  # ceil: desirable is the larger class
    eos = tokenizer.eos_ids[0]
    seen = set()
    for step in range(3):  # one epoch
        batch = dataset[step]
        assert batch["label"].dtype == np.float32 and batch["label"].shape == (4,)
        for i in range(4):
            j = (i - 1) % 4  # row i's KL completion is row i − 1's (row 0: the last row's)
            np.testing.assert_array_equal(batch["rejected_ids"][i], batch["chosen_ids"][j])
            np.testing.assert_array_equal(batch["rejected_mask"][i], batch["chosen_mask"][j])
            assert batch["kl_completion"][i] == batch["completion"][j]
            index, text = int(batch["index"][i]), batch["completion"][i]
            correct = final_answer(source[index]["answer"])
            assert batch["label"][i] == float(labels[index])
            assert text == (correct if labels[index] else pipeline.wrong_answer(correct, 3, index))
            n = batch["chosen_mask"][i].sum()
            assert (
                batch["chosen_ids"][i, n - 1] == eos
                and tokenizer.decode(batch["chosen_ids"][i, : n - 1]) == text
            )
            seen.add(index)
    assert seen == set(range(12))
    again = pipeline.unpaired_dataset(source, tokenizer, **kwargs)[1]  # deterministic in (seed, index)
    np.testing.assert_array_equal(again["chosen_ids"], dataset[1]["chosen_ids"])
    skewed = pipeline.unpaired_dataset(source, tokenizer, **kwargs, desirable_fraction=0.25, shuffle=False)
    assert sum(skewed[s]["label"].sum() for s in range(3)) == 3
    with pytest.raises(ValueError, match=r"data\.desirable_fraction=1\.5"):
        pipeline.unpaired_dataset(source, tokenizer, **kwargs, desirable_fraction=1.5)


def test_class_balance_warning(tokenizer, recwarn):
    kwargs = dict(batch_size=4, max_prompt_len=8, max_target_len=4, seed=0, class_weights=(1.0, 1.0))
    pipeline.unpaired_dataset(small_source(12), tokenizer, **kwargs)  # 6 / 6: ratio 1
    assert pipeline.check_class_balance(4, 3) == pytest.approx(4 / 3)  # the edge: no warning
    assert not [w for w in recwarn if "KTO class balance" in str(w.message)]
    with pytest.warns(UserWarning, match=r"3 desirable and 9 undesirable.*= 0\.333.*\[1, 4/3\]") as info:
        pipeline.unpaired_dataset(small_source(12), tokenizer, **kwargs, desirable_fraction=0.25)
    message = str(info[0].message)
    # λ_D in [9/3, 4/3 · 9/3] = [3, 4] or λ_U in [3/4 · 1/3, 1/3] would fit
    assert (
        "algo.desirable_weight in [3, 4]" in message and "algo.undesirable_weight in [0.25, 0.333]" in message
    )
    with pytest.warns(UserWarning, match="KTO class balance"):
        pipeline.check_class_balance(6, 6, desirable_weight=2.0)


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = char_tokenizer(ARITHMETIC_ALPHABET + "<>/abcdefghijklmnopqrstuvwxyz?")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def jsonl_source(tmp_path, records, name="data"):
    write_jsonl(tmp_path / f"{name}_train.jsonl", records)
    config = ml_collections.ConfigDict(dict(name="jsonl", path=str(tmp_path / f"{name}_{{split}}.jsonl")))
    return make_source(config, "train")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_jsonl_unpaired_records(tmp_path, chat_tokenizer):
    records = [
        {"prompt": "1+1=", "completion": "2", "label": True},
        {"prompt": "2+2=", "completion": "5", "label": False},
        {"prompt": "3+3=", "completion": "6", "label": 1},
        {"prompt": [user("4+4=")], "completion": [assistant("9")], "label": 0},
    ]
    source = jsonl_source(tmp_path, records)
    assert record_format(source[0]) == "unpaired"  # make_source asks for no question field
    kwargs = dict(batch_size=4, max_prompt_len=32, max_target_len=3, seed=0, shuffle=False)
    with pytest.raises(
        DatasetFieldError, match=r"record 3's prompt is a list of chat messages.*data\.chat=True"
    ):
        pipeline.unpaired_dataset(source, chat_tokenizer, **kwargs)
    batch = pipeline.unpaired_dataset(source, chat_tokenizer, chat=True, **kwargs)[0]
    np.testing.assert_array_equal(batch["label"], [1.0, 0.0, 1.0, 0.0])
    assert list(batch["completion"]) == ["2", "5", "6", "9"]
    assert list(batch["kl_completion"]) == ["9", "2", "5", "6"]
    assert list(batch["prompts"]) == [f"<user>{q}</s><assistant>" for q in ("1+1=", "2+2=", "3+3=", "4+4=")]
    assert list(batch["answers"]) == [""] * 4
    np.testing.assert_array_equal(batch["rejected_ids"], np.roll(batch["chosen_ids"], 1, axis=0))
    plain = pipeline.unpaired_dataset(source[:3], chat_tokenizer, **kwargs)[0]
    assert list(plain["prompts"][:3]) == ["1+1=", "2+2=", "3+3="]


def test_jsonl_pair_records_text_and_chat(tmp_path, chat_tokenizer):
    records = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "3"},  # text
        {
            "prompt": [user("2+2=")],
            "chosen": [assistant("4")],
            "rejected": [assistant("5")],
        },  # explicit prompt
        {  # implicit prompt: the messages before the last assistant turn
            "chosen": [user("hi"), assistant("yo"), user("3+3=")] + [assistant("6")],
            "rejected": [user("hi"), assistant("yo"), user("3+3=")] + [assistant("7")],
        },
        {
            "prompt": "4+4=",
            "chosen": [user("why?"), assistant("8")],
            "rejected": [user("why?"), assistant("9")],
        },
    ]
    source = jsonl_source(tmp_path, records)
    assert record_format(source[0]) == "pairs"
    batch = jrl.preference_dataset(
        source,
        chat_tokenizer,
        batch_size=4,
        max_prompt_len=64,
        max_target_len=3,
        seed=0,
        chat=True,
        shuffle=False,
    )[0]
    assert list(batch["chosen"]) == ["2", "4", "6", "8"] and list(batch["rejected"]) == ["3", "5", "7", "9"]
    assert list(batch["prompts"]) == [
        "<user>1+1=</s><assistant>",
        "<user>2+2=</s><assistant>",
        "<user>hi</s><assistant>yo</s><user>3+3=</s><assistant>",
        "<user>4+4=</s><user>why?</s><assistant>",
    ]
    eos = chat_tokenizer.eos_ids[0]
    for row, text in enumerate(batch["rejected"]):
        n = batch["rejected_mask"][row].sum()
        assert (
            batch["rejected_ids"][row, n - 1] == eos
            and chat_tokenizer.decode(batch["rejected_ids"][row, : n - 1]) == text
        )
    # text records work without a chat template
    text = jrl.preference_dataset(
        source[:1], chat_tokenizer, batch_size=1, max_prompt_len=8, max_target_len=3, seed=0, shuffle=False
    )[0]
    assert text["prompts"][0] == "1+1=" and text["chosen"][0] == "2"


@pytest.mark.parametrize(
    "record, kind, message",
    [
        ({"prompt": "1+1=", "chosen": "2"}, "preference", r"record 1 has no field 'rejected'.*data\.path"),
        (
            {"chosen": "2", "rejected": "3"},
            "preference",
            r"record 1 has a text 'chosen' but no field 'prompt'",
        ),
        (
            {"chosen": [user("1+1=")], "rejected": [user("1+1="), assistant("3")]},
            "preference",
            r"record 1's 'chosen' conversation ends with 'user', not an assistant message",
        ),
        (
            {"chosen": [user("1+1="), assistant("2")], "rejected": [user("2+2="), assistant("3")]},
            "preference",
            r"record 1: 'chosen' and 'rejected' hold different prompts",
        ),
        (
            {"prompt": "1+1=", "chosen": [{"role": "assistant", "text": "2"}], "rejected": "3"},
            "preference",
            r"record 1 has field 'chosen' = .*expected a text or a list of chat messages",
        ),
        (
            {"prompt": "1+1=", "completion": "2", "label": "maybe"},
            "unpaired",
            r"record 1 has label='maybe'.*boolean",
        ),
        ({"prompt": "1+1=", "completion": "2", "label": 2}, "unpaired", r"record 1 has label='2'"),
        ({"prompt": "1+1=", "completion": "2"}, "unpaired", r"record 1 has no field 'label'"),
        ({"prompt": "1+1=", "label": True}, "unpaired", r"record 1 has no field 'completion'"),
    ],
)
def test_malformed_records_are_named(tmp_path, chat_tokenizer, record, kind, message):
    good = {"preference": {"prompt": "0+0=", "chosen": "0", "rejected": "1"}}.get(
        kind, {"prompt": "0+0=", "completion": "0", "label": True}
    )
    source = jsonl_source(tmp_path, [good, record])
    kwargs = dict(max_prompt_len=16, max_target_len=3, chat=True)
    with pytest.raises(DatasetFieldError, match=message):
        pipeline.check_preference_records(source, chat_tokenizer, [kind], **kwargs)
    dataset = jrl.preference_dataset if kind == "preference" else jrl.unpaired_dataset
    with pytest.raises(DatasetFieldError, match=message):  # when the dataset is built, before any batch
        dataset(source, chat_tokenizer, batch_size=2, seed=0, **kwargs)


def test_kto_from_pairs_unpairs_each_pair(tmp_path, chat_tokenizer):
    """TRL's `unpair_preference_dataset`: a pair gives its chosen completion (desirable) and its
    rejected one (undesirable) under the same prompt."""
    records = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(3)]
    source = jsonl_source(tmp_path, records)
    kwargs = dict(batch_size=6, max_prompt_len=16, max_target_len=3, seed=0, shuffle=False)
    pipeline.check_preference_records(
        source, chat_tokenizer, ["unpaired"], max_prompt_len=16, max_target_len=3
    )
    batch = jrl.unpaired_dataset(source, chat_tokenizer, **kwargs)[0]
    assert list(batch["prompts"]) == ["0+1=", "0+1=", "1+1=", "1+1=", "2+1=", "2+1="]
    assert list(batch["completion"]) == ["1", "2", "2", "3", "3", "4"]
    np.testing.assert_array_equal(batch["label"], [1, 0, 1, 0, 1, 0])
    assert list(batch["kl_completion"]) == ["4", "1", "2", "2", "3", "3"]


def test_record_formats_must_suit_the_algorithm(tmp_path, chat_tokenizer):
    unpaired = jsonl_source(tmp_path, [{"prompt": "1+1=", "completion": "2", "label": True}], "u")
    pairs = jsonl_source(tmp_path, [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}], "p")
    kwargs = dict(max_prompt_len=16, max_target_len=3)
    with pytest.raises(
        DatasetFieldError, match=r"prompt/completion/label records.*data='preference'.*algo\.name"
    ):
        pipeline.check_preference_records(unpaired, chat_tokenizer, ["preference"], **kwargs)
    with pytest.raises(DatasetFieldError, match=r"data='supervised'.*sft\.steps=0"):
        pipeline.check_preference_records(pairs, chat_tokenizer, ["preference", "supervised"], **kwargs)
    with pytest.raises(
        jrl.TargetTooLongError, match=r"the completion of record 0 has 2 tokens.*max_new_tokens=2"
    ):
        pipeline.check_preference_records(
            unpaired, chat_tokenizer, ["unpaired"], max_prompt_len=16, max_target_len=1
        )


# ---- the trainer ----------------------------------------------------------------------------------------


def smoke_config(tfds_dir):
    config = load_config("kto_arithmetic")
    config.data.data_dir = tfds_dir
    config.data.check_records = 64
    return config


def test_trainer_refuses_a_malformed_record_before_training(tfds_dir, tmp_path):
    records = [{"prompt": f"{i}+1=", "completion": str(i + 1), "label": i % 2 == 0} for i in range(8)]
    records[5]["label"] = "yes"
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / f"kto_{split}.jsonl", records)
    config = smoke_config(tfds_dir)
    config.data.update(name="jsonl", path=str(tmp_path / "kto_{split}.jsonl"))
    config.sft.steps = 0
    with pytest.raises(DatasetFieldError, match=r"record 5 has label='yes'"):
        jrl.Trainer(config, str(tmp_path / "run"))
    config.train.batch_size = 1
    with pytest.raises(jrl.ConfigError, match=r"train\.batch_size=1.*>= 2 examples"):
        jrl.Trainer(config, str(tmp_path / "run"))


def test_smoke_run_end_to_end(tfds_dir, tmp_path):
    config = smoke_config(tfds_dir)
    config.sft.steps = 0  # kept small: tests/test_every_algorithm.py runs the same config too
    config.train.update(steps=2, checkpoint_every=2)
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)
    workdir = str(tmp_path / "run")
    summary = jrl.Trainer(config, workdir).fit()
    rows = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss", "kl", "reward_desirable", "reward_undesirable", "reward_accuracy", "grad_norm"):
            assert np.isfinite(r[key]), (r["step"], key)
        assert 0.0 <= r["desirable_fraction"] <= 1.0 and r["kl"] >= 0.0
    after = summary["main_after"]
    assert {"greedy_accuracy", "preference_accuracy", "likelihood_accuracy"} <= set(after)
