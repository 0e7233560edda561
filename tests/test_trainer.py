"""End-to-end trainer runs at smoke size: every shipped config, resume after SIGKILL, no
recompiles, and clear errors (with the last good checkpoint intact) for bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config, run_script, without_timing

from jaxrl_llm.algorithms import register
from jaxrl_llm.data.pipeline import PromptTooLongError
from jaxrl_llm.data.sources import DatasetFieldError
from jaxrl_llm.rewards import RewardFunctionError, register_reward
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.trainer import NonFiniteLossError, Trainer, train
from jaxrl_llm.types import Algorithm, RolloutTransform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tfds_dir):
    return tfds_dir


def smoke(name, data_dir, **overrides):
    config = load_config(name)
    config.data.data_dir = data_dir
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def grpo_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("grpo"))
    trainer = Trainer(smoke("grpo_arithmetic", data_dir), workdir)
    summary = trainer.fit()
    return trainer, summary, workdir


def test_grpo_smoke_writes_every_output(grpo_run):
    trainer, summary, workdir = grpo_run
    for key in ("sft_before", "sft_after", "main_after"):
        assert {"greedy_accuracy", "pass_at_4"} <= set(summary[key])
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.json"))
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    main = [r for r in records if r["phase"] == "main"]
    assert [r["step"] for r in main] == list(range(5, 11))  # global steps after 4 SFT steps
    for key in ("reward_mean", "reward_std", "reward/exact_match", "zero_variance_groups", "entropy"):
        assert all(np.isfinite(r[key]) for r in main), key
    assert {r["phase"] for r in records} == {"sft", "main", "eval"}
    assert Checkpointer(os.path.join(workdir, "checkpoints", "main")).latest_step() == 10


def test_update_and_sampler_compile_once(grpo_run):
    trainer, _, _ = grpo_run
    for phase in ("sft", "main"):
        prepare, update = trainer.step_fns[phase]
        assert update._cache_size() == 1 and prepare._cache_size() == 1, phase
    assert trainer.sampler().jitted._cache_size() == 1


def test_eval_before_and_periodic_pass_k_can_be_switched_off(data_dir, tmp_path):
    # A sweep of runs from one checkpoint: no 'before' evaluation, greedy-only periodic ones.
    overrides = dict(
        sft__steps=0, train__steps=3, eval__every=2, eval__before=False, eval__periodic_pass_k=False
    )
    summary = Trainer(smoke("grpo_arithmetic", data_dir, **overrides), str(tmp_path)).fit()
    assert "main_before" not in summary and {"greedy_accuracy", "pass_at_4"} <= set(summary["main_after"])
    evals = [r for r in read_metrics(str(tmp_path), phase="eval")]
    assert [r["step"] for r in evals] == [2, 3]  # periodic at step 2, then the 'after' one
    assert "test/greedy_accuracy" in evals[0] and "test/pass_at_4" not in evals[0]


def test_ignore_eos_makes_every_rollout_full_length(grpo_run, data_dir, tmp_path):
    trainer, _, _ = grpo_run
    assert trainer.sampling.stop_ids == trainer.tokenizer.eos_ids  # the default stops at EOS
    forced = Trainer(smoke("grpo_arithmetic", data_dir, sampling__ignore_eos=True), str(tmp_path))
    assert forced.sampling.stop_ids == ()
    ids, mask = forced.tokenizer.encode_batch(["12+34="] * 4, max_length=forced.config.data.max_prompt_len)
    out = forced.sampler()(forced.init_params, ids, mask, jax.random.PRNGKey(0))
    assert int(out.num_steps) == forced.sampling.max_new_tokens
    assert np.asarray(out.response_mask).all()


@register_reward("stops")
def stops(*, prompt, completion, answer, finished):
    """1 for a response that emits EOS: a reward a random smoke-size policy can earn."""
    return float(finished)


def test_ppo_smoke_trains_policy_and_critic(data_dir, tmp_path):
    config = smoke("ppo_arithmetic", data_dir)
    config.rewards = {"stops": 1.0}
    trainer = Trainer(config, str(tmp_path))
    trainer.fit()
    main = read_metrics(str(tmp_path / "metrics.jsonl"), phase="main")
    assert len(main) == 4 and any(r["reward_std"] > 0 for r in main)
    assert all(np.isfinite(r["critic_loss"]) and r["critic_grad_norm"] > 0 for r in main)
    assert all(r["grad_norm"] > 0 and np.isfinite(r["clip_fraction"]) for r in main)
    assert trainer.step_fns["main"][1]._cache_size() == 1  # 2 epochs x 2 mini-batches, one compile
    state = trainer.final_state
    assert state.critic_params is not None and state.ref_params is not None


def test_dpo_smoke_reports_preference_accuracy(data_dir, tmp_path):
    summary = train(smoke("dpo_arithmetic", data_dir), str(tmp_path))
    assert {"preference_accuracy", "likelihood_accuracy"} <= set(summary["main_after"])
    main = read_metrics(str(tmp_path / "metrics.jsonl"), phase="main")
    assert all(0.0 <= r["reward_accuracy"] <= 1.0 for r in main)


KILL_SCRIPT = """
import sys, time
import jax
from jaxrl_llm.rewards import register_reward
from jaxrl_llm.rewards.math import exact_match

@register_reward("slow_exact_match")
def slow_exact_match(**kw):  # slows each step so the test can kill the run mid-way
    time.sleep(0.004)
    return exact_match(**kw)

from jaxrl_llm import main as entry
from absl import app
sys.argv = ["main", "--config=configs/grpo_arithmetic.py:smoke", "--workdir=" + sys.argv[1],
            "--config.data.data_dir=" + sys.argv[2], "--config.rewards=" + "{'slow_exact_match': 1.0}",
            "--config.train.steps=16"]
app.run(entry.main)
"""


def final_params(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "main"))
    state, meta = ckpt.restore()
    assert meta["done"]
    return state


@pytest.mark.slow  # the default suite kills and resumes mid-run in test_extension_api (DAPO) and test_multi_turn
@pytest.mark.filterwarnings("ignore")
def test_sigkill_then_rerun_continues_the_same_trajectory(data_dir, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    run_script(KILL_SCRIPT, full, data_dir)
    run_script(KILL_SCRIPT, killed, data_dir, kill_after_step=10)  # SFT ends at 4; main checkpoints every 2
    main = [r for r in read_metrics(os.path.join(killed, "metrics.jsonl")) if r["phase"] == "main"]
    assert main[-1]["step"] < 20, "killed run must be unfinished"
    run_script(KILL_SCRIPT, killed, data_dir)  # the same command again: resumes from the last checkpoint
    a, b = final_params(full), final_params(killed)
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
    ma = without_timing(read_metrics(os.path.join(full, "metrics.jsonl")))
    mb = without_timing(read_metrics(os.path.join(killed, "metrics.jsonl")))
    assert ma == mb


# ----------------------------------------------------------------------------- bad input


def test_unknown_algorithm_lists_known_ones(data_dir, tmp_path):
    config = smoke("grpo_arithmetic", data_dir)
    config.algo.name = "grpoo"
    with pytest.raises(ValueError, match=r"unknown algorithm 'grpoo'.*known algorithms: .*grpo"):
        Trainer(config, str(tmp_path))


def test_missing_dataset_field_is_named(tmp_path):
    path = tmp_path / "data_train.jsonl"
    path.write_text(json.dumps({"question": "1+1=", "solution": "#### 2"}) + "\n")
    config = smoke("grpo_arithmetic", "")
    config.data.update(name="jsonl", path=str(tmp_path / "data_{split}.jsonl"), splits=("train",))
    with pytest.raises(DatasetFieldError, match=r"'answer'.*solution.*data\.answer_field"):
        Trainer(config, str(tmp_path / "run"))


def test_prompt_longer_than_budget_fails_at_start(data_dir, tmp_path):
    config = smoke("grpo_arithmetic", data_dir, data__max_prompt_len=5)
    with pytest.raises(PromptTooLongError, match=r"max_prompt_len=(8|9)"):
        Trainer(config, str(tmp_path)).fit()
    assert not os.path.exists(tmp_path / "checkpoints" / "sft" / "4")


@register_reward("raises_on_step_3")
def raises_on_step_3(*, prompt, completion, answer, finished):
    raises_on_step_3.calls += 1
    if raises_on_step_3.calls > 3 * 32:  # the 4th main step (8 prompts x 4 samples per step)
        raise KeyError("boom")
    return float(finished)


raises_on_step_3.calls = 0


def test_raising_reward_shows_the_sample_and_keeps_the_checkpoint(data_dir, tmp_path):
    config = smoke("grpo_arithmetic", data_dir, sft__steps=0)
    config.rewards = {"raises_on_step_3": 1.0}
    with pytest.raises(
        RewardFunctionError,
        match=r"(?s)raises_on_step_3.*KeyError.*sample 0.*prompt: '\d+\+\d+='.*completion: ",
    ):
        Trainer(config, str(tmp_path)).fit()
    ckpt = Checkpointer(str(tmp_path / "checkpoints" / "main"))
    assert ckpt.latest_step() == 2
    state, meta = ckpt.restore()
    assert not meta.get("done") and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@register("nan_after_two_batches")
def nan_after_two_batches():
    """SFT loss that becomes NaN from the third batch on (a counting transform)."""
    counter = RolloutTransform(init=lambda: jnp.zeros((), jnp.int32), update=lambda b, s: (b, s + 1))

    def objective(outputs, batch, count):
        loss = -jnp.sum(outputs.logp) / batch.extras["num_tokens"]
        return jnp.where(count > 2, jnp.nan, loss), {}

    return Algorithm("supervised", counter, objective)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_stops_or_skips(data_dir, tmp_path, mode):
    config = smoke("grpo_arithmetic", data_dir, sft__steps=0, train__nonfinite=mode, train__steps=4)
    config.algo = {"name": "nan_after_two_batches"}
    trainer = Trainer(config, str(tmp_path))
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"step 3 .*nonfinite=skip"):
            trainer.fit()
        state, _ = Checkpointer(str(tmp_path / "checkpoints" / "main")).restore()
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
        return
    trainer.fit()
    main = read_metrics(str(tmp_path / "metrics.jsonl"), phase="main")
    assert [r.get("skipped_updates", 0) for r in main] == [0, 0, 1, 1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(trainer.final_state.params))


def test_changed_config_in_existing_workdir_is_refused(data_dir, tmp_path):
    Trainer(smoke("grpo_arithmetic", data_dir), str(tmp_path))
    with pytest.raises(ValueError, match=r"different config.*algo\.clip_eps"):
        Trainer(smoke("grpo_arithmetic", data_dir, algo__clip_eps=0.3), str(tmp_path))
    # Resumable changes are accepted: a longer run under another remat policy.
    Trainer(smoke("grpo_arithmetic", data_dir, model__remat="full", train__steps=50), str(tmp_path))
    # A field the library added after the run started (absent from its config.json) at its
    # default is no change; set to another value, it is.
    path = tmp_path / "config.json"
    for accepted in (True, False):
        saved = json.loads(path.read_text())
        del saved["data"]["train_records"]
        path.write_text(json.dumps(saved))
        if accepted:
            Trainer(smoke("grpo_arithmetic", data_dir, model__remat="full", train__steps=50), str(tmp_path))
    with pytest.raises(ValueError, match=r"different config.*data\.train_records"):
        Trainer(smoke("grpo_arithmetic", data_dir, data__train_records=64), str(tmp_path))


# ------------------------------------------------------------------- real-model recipe (gsm8k)


GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 6 pens. How many pens in 2 boxes?", "answer": "6 * 2 = 12\n#### 12"},
    {"question": "Sara had 10 cookies and ate 3. How many are left?", "answer": "10 - 3 = 7\n#### 7"},
    {"question": "There are 5 cats with 4 legs each. How many legs?", "answer": "5 * 4 = 20\n#### 20"},
]


def test_grpo_gsm8k_smoke_on_tiny_qwen2_checkpoint(tmp_path):
    from jaxrl_llm.data.tokenizer import char_tokenizer
    from jaxrl_llm.models.config import TransformerConfig
    from jaxrl_llm.models.hf import save_checkpoint
    from jaxrl_llm.models.transformer import init_params

    alphabet = "".join(sorted(set("".join(r["question"] + r["answer"] for r in GSM8K_ROWS)) | set("#:'")))
    tokenizer = char_tokenizer(alphabet + "<|im_start|>\n")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    config = TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        mlp_dim=64,
        qkv_bias=True,
        tie_embeddings=True,
        model_type="qwen2",
        eos_token_id=tokenizer.eos_ids,
        pad_token_id=tokenizer.pad_id,
        max_position_embeddings=256,
    )
    checkpoint = tmp_path / "qwen2"
    save_checkpoint(str(checkpoint), config, init_params(config, jax.random.PRNGKey(0)), head="causal_lm")
    tokenizer.save(str(checkpoint))
    for split in ("train", "test"):
        with open(tmp_path / f"gsm8k_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in GSM8K_ROWS)

    run = load_config("grpo_gsm8k")
    run.model.checkpoint = str(checkpoint)
    run.data.path = str(tmp_path / "gsm8k_{split}.jsonl")
    trainer = Trainer(run, str(tmp_path / "run"))
    summary = trainer.fit()
    assert trainer.model_config.model_type == "qwen2"
    assert "reference" in trainer.algorithm.needs()
    main = read_metrics(str(tmp_path / "run" / "metrics.jsonl"), phase="main")
    assert len(main) == 3 and all(np.isfinite(r["kl"]) for r in main)
    assert "greedy_accuracy" in summary["main_after"]
