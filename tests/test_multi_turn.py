"""Multi-turn episodes (jaxrl_llm/rollout/multi_turn.py), token-in/token-out.

Acceptance: on a rollout collected by a smoke Trainer the trainer's forward gives the sampler's
log-probs on every trained token (and visibly does not when observations are hidden from
attention); observation tokens carry no gradient and are not counted; a multi-turn run killed
with SIGKILL and rerun ends bit-identical to an uninterrupted one; chat-template observations
are exactly what rendering the whole conversation adds, and a template that is not
prefix-stable is refused clearly. The rest runs the strategy on a scripted sampler (no model).
"""

import importlib
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from run_helpers import load_config, run_script, without_timing
from tokenizers import decoders, models, pre_tokenizers, trainers

import jaxrl_llm as jrl
from jaxrl_llm.data.pipeline import format_prompt
from jaxrl_llm.rollout.multi_turn import (
    Environment,
    Observation,
    get_environment,
    multi_turn,
    register_environment,
)
from jaxrl_llm.rollout.sampler import SampleOutput, SamplingConfig
from jaxrl_llm.rollout.strategies import PromptBatch, StrategyContext, make_strategy
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.steps import with_normalisers
from jaxrl_llm.train.trainer import Trainer

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:  # the ext modules are imported as ext_algorithms.<name> everywhere
    sys.path.insert(0, TESTS)
ext = importlib.import_module("ext_algorithms.two_turn_tool")


def smoke_config(tfds_dir):
    config = ext.configure(load_config("grpo_arithmetic"))
    config.data.data_dir = tfds_dir
    config.data.check_records = 0
    return config


# ----------------------------------------------------------------------------- a smoke Trainer


@pytest.fixture(scope="module")
def collected(tfds_dir, tmp_path_factory):
    """A smoke Trainer of `ext_two_turn_grpo`, its initial state and the rollouts of two steps."""
    trainer = Trainer(smoke_config(tfds_dir), str(tmp_path_factory.mktemp("multi_turn")))
    phase = trainer.phases[-1]
    state = trainer._initial_state(phase, trainer.init_params, 0)
    dataset = trainer._datasets(phase, trainer.config.seed + 1)
    rollouts = [trainer.collect(state, PromptBatch.from_dict(dataset[i]))[0] for i in range(2)]
    return trainer, state, rollouts, dataset


def forward(trainer, params, batch, group_size=1):
    """The trainer's policy forward (its sampling temperature), jitted once per layout."""
    fn = jax.jit(batch_policy_outputs, static_argnums=(0, 3), static_argnames="group_size")
    return fn(trainer.model_config, params, batch, trainer.sampling.temperature, group_size=group_size)


def _masks(rollout):
    response = np.asarray(rollout.response_mask) > 0
    loss = np.asarray(rollout.loss_mask) > 0
    return response, loss, response & ~loss


def test_smoke_rollout_layout(collected):
    trainer, _, (rollout, _), dataset = collected
    response, loss, obs = _masks(rollout)
    t, o = trainer.sampling.max_new_tokens, 4
    assert rollout.response_ids.shape[1] == 2 * t + o
    assert (rollout.extras["turns"] == 2).all() and obs.sum(1).tolist() == [o] * len(obs)
    answers = np.repeat(dataset[0]["answers"], trainer.sampling.num_samples)
    for row, mask, answer in zip(rollout.response_ids, obs, answers, strict=True):
        assert trainer.tokenizer.decode(row[mask]) == "=" + jrl.final_answer(str(answer))
    assert np.all(response[:, :-1] >= response[:, 1:])  # right-padded: no padding inside a row
    assert np.all(np.asarray(rollout.logp_behav)[~loss] == 0) and np.all(
        np.asarray(rollout.logp_behav)[loss] < 0
    )
    assert {"turns", "finished", "prompt_index", "reward/ext_finished"} <= set(rollout.extras)
    # Each turn's sampler compiled once: the next step reuses both programs.
    assert trainer.sampler().jitted._cache_size() == 1
    assert trainer.sampler(num_samples=1).jitted._cache_size() == 1


def test_trainer_logp_equals_sampler_logp_on_every_trained_token(collected):
    trainer, state, (rollout, _), _ = collected
    _, loss, obs = _masks(rollout)
    batch = jax.tree.map(jnp.asarray, rollout)
    t = trainer.sampling.temperature
    g = trainer.sampling.num_samples
    for group_size in (1, g):  # the trainer's grouped prompt layout too
        logp = np.asarray(
            batch_policy_outputs(trainer.model_config, state.params, batch, t, group_size=group_size).logp
        )
        assert np.abs(logp - rollout.logp_behav)[loss].max() < 1e-5
    # The test can fail: with the observations hidden from attention, turn 2 is another context.
    hidden = batch._replace(response_mask=jnp.asarray(np.where(obs, 0, rollout.response_mask)))
    logp = np.asarray(forward(trainer, state.params, hidden).logp)
    assert np.abs(logp - rollout.logp_behav)[loss].max() > 1e-3


def test_observation_tokens_carry_no_gradient(collected):
    trainer, state, (rollout, _), _ = collected
    _, loss, obs = _masks(rollout)
    algo = trainer.algorithm
    rewards = np.random.default_rng(0).normal(size=rollout.rewards.shape).astype(np.float32)
    batch = jax.tree.map(jnp.asarray, rollout._replace(rewards=rewards))
    batch, algo_state = algo.transform.update(batch, algo.transform.init())
    batch = with_normalisers(batch)  # what the trainer's update does to each mini-batch
    assert float(batch.extras["num_tokens"]) == loss.sum() < np.asarray(rollout.response_mask).sum()
    outputs = forward(trainer, state.params, batch)

    def loss_of(logp):
        return algo.objective(outputs._replace(logp=logp), batch, algo_state)[0]

    grad = np.asarray(jax.jit(jax.grad(loss_of))(outputs.logp))
    assert obs.any() and np.all(grad[obs] == 0) and np.abs(grad[loss]).max() > 0
    moved = outputs.logp + 3.0 * jnp.asarray(obs, jnp.float32)
    assert float(jax.jit(loss_of)(moved)) == float(jax.jit(loss_of)(outputs.logp))


# ----------------------------------------------------------------------------- kill and resume

KILL_SCRIPT = """
import sys, time
sys.path.insert(0, "tests")
import ext_algorithms.two_turn_tool  # registers ext_two_turn_grpo and its tool environment
from jaxrl_llm.rewards import register_reward

@register_reward("slow_finished")
def slow_finished(*, prompt, completion, answer, finished):  # slows steps so the run can be killed
    time.sleep(0.004)
    return float(finished)

from absl import app
from jaxrl_llm import main as entry
sys.argv = ["main", "--config=configs/grpo_arithmetic.py:smoke", "--workdir=" + sys.argv[1],
            "--config.data.data_dir=" + sys.argv[2], "--config.algo.name=ext_two_turn_grpo",
            "--config.sft.steps=0", "--config.data.check_records=0",
            "--config.rewards={'slow_finished': 1.0}", "--config.train.steps=10"]
app.run(entry.main)
"""


@pytest.mark.slow  # ~30 s; SIGKILL/rerun stays in the default suite through test_replay and test_checkpoint_faults
@pytest.mark.filterwarnings("ignore")
def test_sigkill_then_rerun_is_bit_identical(tfds_dir, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    run_script(KILL_SCRIPT, full, tfds_dir)
    run_script(KILL_SCRIPT, killed, tfds_dir, kill_after_step=5)  # checkpoints every 2 steps
    main = [r for r in read_metrics(os.path.join(killed, "metrics.jsonl")) if r["phase"] == "main"]
    assert main[-1]["step"] < 10, "killed run must be unfinished"
    run_script(KILL_SCRIPT, killed, tfds_dir)  # the same command again: resumes from the last checkpoint
    states = []
    for workdir in (full, killed):
        state, meta = Checkpointer(os.path.join(workdir, "checkpoints", "main")).restore()
        assert meta["done"]
        states.append(state)
    jax.tree.map(np.testing.assert_array_equal, states[0]["params"], states[1]["params"])
    jax.tree.map(np.testing.assert_array_equal, states[0]["opt_state"], states[1]["opt_state"])
    ma = without_timing(read_metrics(os.path.join(full, "metrics.jsonl")))
    mb = without_timing(read_metrics(os.path.join(killed, "metrics.jsonl")))
    assert ma == mb
    steps = [r for r in ma if r["phase"] == "main"]
    assert all(r["multi_turn/turns"] == 2 for r in steps) and any(r["grad_norm"] > 0 for r in steps)


# ----------------------------------------------------------------------------- scripted sampler

T, G = 8, 2


def scripted_context(tokenizer, script, num_samples=G, max_new_tokens=T, calls=None, scored=None):
    """A StrategyContext whose k-th sample call answers script(k, row) (text; + the stop token
    unless it ends with '~'), log-prob -0.5 per token; score: reward 1 per finished row."""
    stop = tokenizer.eos_ids[0]
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, num_samples=num_samples, stop_ids=(stop,), pad_id=tokenizer.pad_id
    )
    counter = []

    def sample_fn(params, ids, mask, rng, num_samples=num_samples, **_):
        turn = len(counter)
        counter.append(1)
        if calls is not None:
            calls.append((np.asarray(ids), np.asarray(mask)))
        n = len(ids) * num_samples
        resp = np.full((n, max_new_tokens), tokenizer.pad_id, np.int32)
        resp_mask = np.zeros((n, max_new_tokens), np.int32)
        for i in range(n):
            text = script(turn, i)
            row = tokenizer.encode(text.rstrip("~"), add_special_tokens=False) + (
                [] if text.endswith("~") else [stop]
            )
            resp[i, : len(row)], resp_mask[i, : len(row)] = row, 1
        return SampleOutput(
            resp, resp_mask, -0.5 * resp_mask.astype(np.float32), np.zeros(n, np.int32), max_new_tokens
        )

    def score_fn(rows, response_ids, response_mask, completions, finished):
        if scored is not None:
            scored.append((list(completions), np.asarray(finished)))
        rewards = np.asarray(finished, np.float32)
        return jrl.Scores(rewards, {"fake": rewards})

    return StrategyContext(
        params=None, step=0, num_samples=num_samples, sampling=sampling, tokenizer=tokenizer, aux={},
        sample_fn=sample_fn, score_fn=score_fn, extra_prompts=None,
    )  # fmt: skip


def prompt_batch(tokenizer, questions, answers, width, chat=False):
    texts = [format_prompt(q, tokenizer, chat) for q in questions]
    ids, mask = tokenizer.encode_batch(texts, max_length=width, add_special_tokens=False)
    return PromptBatch(ids, mask, np.array(texts), np.array(answers), np.arange(len(texts), dtype=np.int32))


CHARS = jrl.char_tokenizer("0123456789+-*/=# \n")


def test_row_layout_contexts_and_scoring_on_a_scripted_sampler():
    calls, scored = [], []
    # Turn 1 writes the question's expression (row 1's is cut at max_new_tokens), turn 2 answers.
    script = {0: lambda i: ["12+34", "5*6~"][i // G], 1: lambda i: "46"}
    ctx = scripted_context(CHARS, lambda k, i: script[k](i), calls=calls, scored=scored)
    prompts = prompt_batch(CHARS, ["12+34=", "5*6="], ["#### 46", "#### 30"], width=8)
    strategy = multi_turn("calculator", max_turns=2, max_obs_tokens=4, score_turns="last")
    r = strategy.collect(ctx, prompts, jax.random.PRNGKey(0))
    enc = CHARS.encode
    eos, t_total = CHARS.eos_ids[0], 2 * T + 4
    # (ids, loss mask) of each row: turn 1 | observation | turn 2 (+ the stop token where sampled)
    done_row = (enc("12+34") + [eos] + enc("=46") + enc("46") + [eos], [1] * 6 + [0] * 3 + [1] * 3)
    cut_row = (enc("5*6") + enc("=30") + enc("46") + [eos], [1] * 3 + [0] * 3 + [1] * 3)
    for i, (want, loss) in enumerate([done_row] * G + [cut_row] * G):
        k = len(want)
        assert r.response_ids[i, :k].tolist() == want and (r.response_ids[i, k:] == CHARS.pad_id).all()
        assert r.response_mask[i].tolist() == [1] * k + [0] * (t_total - k)
        assert r.loss_mask[i].tolist() == loss + [0] * (t_total - k)
        np.testing.assert_array_equal(r.logp_behav[i], -0.5 * r.loss_mask[i])
    # Turn 2's context: prompt + turn 1 + observation, left-padded to P + T + O, last column real.
    ids, mask = calls[1]
    assert ids.shape == (2 * G, 8 + T + 4) and mask[:, -1].all()
    real = ids[0][mask[0] > 0].tolist()
    assert real == enc("12+34=") + enc("12+34") + [eos] + enc("=46")
    assert scored[0][0] == ["46"] * 4 and scored[0][1].all()  # score_turns='last': the answer turn
    assert r.extras["turns"].tolist() == [2] * 4 and r.extras["finished"].tolist() == [1.0] * 4
    assert r.group_ids.tolist() == [0, 0, 1, 1] and r.extras["prompt_index"].tolist() == [0, 0, 1, 1]
    assert r.metrics["multi_turn/done_fraction"] == 1.0
    # Every model turn is scored by default (loss-mask tokens only, stop tokens dropped).
    scored.clear()
    ctx = scripted_context(CHARS, lambda k, i: script[k](i), scored=scored)
    multi_turn("calculator", max_turns=2, max_obs_tokens=4).collect(ctx, prompts, jax.random.PRNGKey(0))
    assert scored[0][0] == ["12+3446", "12+3446", "5*646", "5*646"]


@register_environment("test_stops_early")
def stops_early() -> Environment:
    """Prompt '1' ends after turn 1, the others after turn 3 (observations: the ids of '#');
    reward = the number of turns."""

    def step(state, text, ids):
        prompt, turn = state[0], state[1] + 1
        done = turn == 3 or prompt == "1"
        return (prompt, turn), Observation(
            ids=None if done else CHARS.encode("#"), done=done, reward=float(turn) if done else None
        )

    return Environment(reset=lambda prompt, answer: (prompt, 0), step=step)


def test_ended_episodes_stop_and_env_rewards_are_used():
    calls = []
    ctx = scripted_context(CHARS, lambda k, i: str(k), calls=calls)
    prompts = prompt_batch(CHARS, ["1", "2"], ["1", "2"], width=2)
    r = multi_turn("test_stops_early", max_turns=4, max_obs_tokens=1).collect(
        ctx, prompts, jax.random.PRNGKey(0)
    )
    assert len(calls) == 3 and r.extras["turns"].tolist() == [1, 1, 3, 3]
    assert r.response_mask.sum(1).tolist() == [2, 2, 8, 8]  # 3 turns of 2 tokens, 2 observations
    assert CHARS.decode(r.response_ids[2]) == "0#1#2" and r.loss_mask[2].tolist()[:8] == [
        1,
        1,
        0,
        1,
        1,
        0,
        1,
        1,
    ]
    assert (
        r.rewards.tolist() == [1.0, 1.0, 3.0, 3.0] and r.extras["reward/env"].tolist() == r.rewards.tolist()
    )
    assert r.extras["reward/fake"].tolist() == [1.0] * 4  # the configured sources are logged too
    # Every episode ends after turn 1: no second turn is sampled.
    calls.clear()
    prompts = prompt_batch(CHARS, ["1", "1"], ["1", "1"], width=2)
    multi_turn("test_stops_early", max_turns=4, max_obs_tokens=1).collect(ctx, prompts, jax.random.PRNGKey(0))
    assert len(calls) == 1


def test_mixed_rewards_long_observations_and_names_are_clear_errors():
    prompts = prompt_batch(CHARS, ["1", "2"], ["1", "2"], width=2)
    with pytest.raises(
        ValueError, match=r"reward in the last observation of some episodes but not of others"
    ):
        # Prompt '1' ends with a reward after turn 1; prompt '2' is truncated at max_turns without one.
        multi_turn("test_stops_early", max_turns=2, max_obs_tokens=1).collect(
            scripted_context(CHARS, lambda k, i: "7"), prompts, jax.random.PRNGKey(0)
        )
    prompts = prompt_batch(CHARS, ["12+34="], ["46"], width=8)
    with pytest.raises(
        ValueError, match=r"observation after turn 1 of row 0 has 3 tokens, more than max_obs_tokens=2"
    ):
        multi_turn("calculator", 2, max_obs_tokens=2).collect(
            scripted_context(CHARS, lambda k, i: "12+34"), prompts, jax.random.PRNGKey(0)
        )
    with pytest.raises(ValueError, match=r"unknown environment 'nope'.*calculator"):
        make_strategy("multi_turn", env="nope", max_turns=2, max_obs_tokens=4)
    strategy = make_strategy(
        "multi_turn", env="calculator", max_turns=2, max_obs_tokens=7, env_args={"max_turns": 2}
    )
    assert isinstance(strategy, jrl.RolloutStrategy)


def test_calculator_evaluates_the_models_expression():
    env = get_environment("calculator", max_turns=3)
    state = env.reset("12+34=", "#### 46")
    state, obs = env.step(state, "999*999=", [])
    assert obs == Observation(text="=998001")
    state, obs = env.step(state, "hello", [])
    assert obs.text == "=?" and not obs.done
    _, obs = env.step(state, "46", [])
    assert obs.done and obs.reward is None


# ----------------------------------------------------------------------------- chat templates

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = """{% if messages[0]['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant{{ EXTRA }}.<|im_end|>
{% endif %}
{% for message in messages %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""
SENTENCES = ["What is 12 + 30? The answer is 42.", "The tool says 42.", "You are a helpful assistant."] * 8


@pytest.fixture(scope="module")
def bpe_backend():
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(SENTENCES, trainer)
    return backend


def chat_tokenizer(backend, extra=""):
    ids = {t: backend.token_to_id(t) for t in SPECIAL}
    template = CHATML.replace("{{ EXTRA }}", extra)
    return jrl.Tokenizer(
        backend, eos_ids=(ids["<|im_end|>"],), pad_id=ids["<|endoftext|>"], chat_template=template
    )


@register_environment("test_tool_says")
def tool_says() -> Environment:
    return Environment(
        reset=lambda p, a: 0, step=lambda s, text, ids: (s + 1, Observation(text=f"The tool says {s + 42}."))
    )


def test_chat_observations_are_what_rendering_the_whole_conversation_adds(bpe_backend):
    tok = chat_tokenizer(bpe_backend)
    turns = ["What is 12 + 30?", "The answer is 42~", "The answer is 42."]  # turn 2 is cut: no stop token
    ctx = scripted_context(tok, lambda k, i: turns[k], max_new_tokens=16)
    prompts = prompt_batch(tok, ["What is 12 + 30?"], ["42"], width=64, chat=True)
    r = multi_turn("test_tool_says", max_turns=3, max_obs_tokens=24).collect(
        ctx, prompts, jax.random.PRNGKey(0)
    )
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    conversation = question + [
        {"role": "assistant", "content": turns[0]},
        {"role": "tool", "content": "The tool says 42."},
        {"role": "assistant", "content": turns[1].rstrip("~")},
        {"role": "tool", "content": "The tool says 43."},
        {"role": "assistant", "content": turns[2]},
    ]
    whole = tok.apply_chat_template(conversation, add_generation_prompt=False, tokenize=True)
    for row in range(G):
        ours = (
            prompts.prompt_ids[0][prompts.prompt_mask[0] > 0].tolist()
            + r.response_ids[row][r.response_mask[row] > 0].tolist()
        )
        assert ours == whole[: len(ours)]
        assert (
            tok.decode(whole[len(ours) :], skip_special_tokens=False) == "\n"
        )  # the closing after <|im_end|>
        obs = (r.response_mask[row] > 0) & (r.loss_mask[row] == 0)
        text = tok.decode(r.response_ids[row][obs], skip_special_tokens=False)
        # Turn 2 was cut: its observation closes the assistant turn (<|im_end|>) itself.
        assert text == (
            "\n<|im_start|>tool\nThe tool says 42.<|im_end|>\n<|im_start|>assistant\n"
            "<|im_end|>\n<|im_start|>tool\nThe tool says 43.<|im_end|>\n<|im_start|>assistant\n"
        )
    # chat=False on the same prompts: observations are the plain encoded text.
    ctx = scripted_context(tok, lambda k, i: turns[k], max_new_tokens=16)
    r = multi_turn("test_tool_says", max_turns=2, max_obs_tokens=24, chat=False).collect(
        ctx, prompts, jax.random.PRNGKey(0)
    )
    obs = (r.response_mask[0] > 0) & (r.loss_mask[0] == 0)
    assert r.response_ids[0][obs].tolist() == tok.encode("The tool says 42.", add_special_tokens=False)


def test_a_template_that_is_not_prefix_stable_is_refused(bpe_backend):
    tok = chat_tokenizer(bpe_backend, extra=" ({{ messages | length }} messages)")
    ctx = scripted_context(tok, lambda k, i: "The answer is 42.", max_new_tokens=16)
    prompts = prompt_batch(tok, ["What is 12 + 30?"], ["42"], width=64, chat=True)
    with pytest.raises(ValueError, match=r"(?s)not prefix-stable at turn 1.*\(1 messages\).*\(2 messages\)"):
        multi_turn("test_tool_says", max_turns=2, max_obs_tokens=24).collect(
            ctx, prompts, jax.random.PRNGKey(0)
        )
    with pytest.raises(ValueError, match=r"chat=True.*not a user message rendered"):
        plain = prompt_batch(tok, ["What is 12 + 30?"], ["42"], width=64, chat=False)
        multi_turn("test_tool_says", max_turns=2, max_obs_tokens=24, chat=True).collect(
            ctx, plain, jax.random.PRNGKey(0)
        )
