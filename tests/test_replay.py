"""The replay strategy (jaxrl_llm/rollout/replay.py) and the host-state seam it rides on
(`RolloutStrategy.init_state`, `Checkpointer.save(host_state=...)`, the trainer's
`strategy_state`): staleness, which rows a step trains on, a bit-identical resume of a run with
a full buffer, and a damaged host-state file caught by the step's checksums."""

import json
import os
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from run_helpers import load_config, without_timing

from jaxrl_llm.rewards import register_reward
from jaxrl_llm.rollout.replay import pack_rollout, replay, unpack_rollout
from jaxrl_llm.rollout.strategies import make_strategy
from jaxrl_llm.train.checkpoint import HOST_STATE_FILE, HOST_STATE_KEY, MANIFEST_FILE, Checkpointer
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.trainer import Trainer
from jaxrl_llm.types import Rollout, RolloutStrategy


def tagged(step: int, rows: int = 4) -> Rollout:
    """A host rollout whose every array says which step collected it."""
    return Rollout(
        prompt_ids=np.full((rows, 2), step, np.int32),
        prompt_mask=np.ones((rows, 2), np.int32),
        response_ids=np.full((rows, 3), step, np.int32),
        response_mask=np.ones((rows, 3), np.int32),
        group_ids=np.arange(rows, dtype=np.int32) // 2,
        logp_behav=np.full((rows, 3), -0.5 - step, np.float32),
        rewards=np.full(rows, float(step), np.float32),
        extras={
            "reward/x": np.full(rows, step, np.float32),
            "record_index": np.arange(rows, dtype=np.int32) + step,
        },
        metrics={"inner/metric": float(step)},
    )


def by_step() -> RolloutStrategy:
    return RolloutStrategy(lambda ctx, prompts, rng: tagged(ctx.step))


def counting() -> RolloutStrategy:
    """A stateful inner strategy: counts its calls (state nested under 'inner/' by replay)."""

    def collect(ctx, prompts, rng, state):
        return tagged(ctx.step), {"calls": state["calls"] + 1}

    return RolloutStrategy(collect, lambda: {"calls": np.asarray(0, np.int64)})


def run_steps(strategy, steps, state=None, start=0):
    out = []
    for t in range(start, start + steps):
        rollout, state = strategy.run(SimpleNamespace(step=t), None, None, state)
        out.append(rollout)
    return out, state


def test_step_t_trains_on_the_rollout_collected_at_t_minus_k():
    # k = 2: steps 0 and 1 train on their fresh rollouts (the buffer fills), step t >= 2 on step t − 2's.
    rollouts, state = run_steps(replay(2, by_step()), 6)
    assert [int(r.rewards[0]) for r in rollouts] == [0, 1, 0, 1, 2, 3]
    assert [r.metrics["replay/staleness"] for r in rollouts] == [0, 0, 2, 2, 2, 2]
    assert [r.metrics["replay/fresh_reward_mean"] for r in rollouts] == [0, 1, 2, 3, 4, 5]
    assert [r.metrics["inner/metric"] for r in rollouts] == [0, 1, 2, 3, 4, 5]  # the fresh collection's
    for t, r in enumerate(rollouts):  # every field of the trained rows is step t − k's, logp_behav kept
        src = tagged(max(t - 2, 0) if t >= 2 else t)
        for field in ("prompt_ids", "response_ids", "group_ids", "logp_behav", "rewards"):
            np.testing.assert_array_equal(getattr(r, field), getattr(src, field), err_msg=f"step {t} {field}")
        np.testing.assert_array_equal(r.extras["record_index"], src.extras["record_index"])
        assert r.loss_mask is None and r.logp_old is None
    assert int(state["size"]) == 2 and set(np.unique(state["buffer/0/rewards"])) == {4.0}
    rollouts, _ = run_steps(replay(0, by_step()), 3)  # k = 0: on-policy
    assert [int(r.rewards[0]) for r in rollouts] == [0, 1, 2]
    assert {r.metrics["replay/staleness"] for r in rollouts} == {0.0}


def test_replay_state_round_trips_and_nests_a_stateful_inner(tmp_path):
    strategy = replay(1, counting())
    _, state = run_steps(strategy, 3)
    assert int(state["inner/calls"]) == 3 and int(state["size"]) == 1
    # the state survives a checkpoint (npz, no pickle) and the continuation is identical
    with Checkpointer(tmp_path / "ckpt", max_to_keep=None) as ckpt:
        ckpt.save(3, {"x": np.zeros(2)}, {"phase": "main"}, force=True, host_state=state)
        _, meta = ckpt.restore(3)
    loaded = meta[HOST_STATE_KEY]
    assert sorted(loaded) == sorted(state)
    a, _ = run_steps(strategy, 2, state, start=3)
    b, _ = run_steps(strategy, 2, loaded, start=3)
    for x, y in zip(a, b, strict=True):
        assert jax.tree.structure(x) == jax.tree.structure(y)
        for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
            assert np.asarray(u).tobytes() == np.asarray(v).tobytes()
    r = tagged(7)
    back = unpack_rollout(pack_rollout(r, "p/"), "p/")
    assert back.metrics == r.metrics and back.token_rewards is None
    np.testing.assert_array_equal(back.extras["reward/x"], r.extras["reward/x"])


def test_replay_is_registered_and_checks_k():
    assert make_strategy("replay", k=3).init_state()["size"] == 0
    with pytest.raises(ValueError, match=r"rollout\.k"):
        replay(-1)
    with pytest.raises(ValueError, match="accepts: k, inner"):
        make_strategy("replay", staleness=2)


def _flip(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)


def test_damaged_host_state_is_caught_by_the_manifest(tmp_path, capsys):
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, max_to_keep=None) as ckpt:
        for step in (2, 4):
            ckpt.save(
                step, {"x": np.full(2, step)}, {"step": step}, force=True, host_state={"b": np.arange(step)}
            )
    manifest = json.loads((directory / "4" / MANIFEST_FILE).read_text())
    assert HOST_STATE_FILE in manifest["files"]  # written inside the commit, before the manifest
    _flip(directory / "4" / HOST_STATE_FILE)
    with Checkpointer(directory, max_to_keep=None) as ckpt:
        assert ckpt.verify(4) == [f"{HOST_STATE_FILE}: content differs from its checksum"]
        step, _, meta = ckpt.restore_latest_good({"x": np.zeros(2, np.int64)})
    assert step == 2
    np.testing.assert_array_equal(meta[HOST_STATE_KEY]["b"], np.arange(2))
    assert f"step 4 in {directory} is damaged: {HOST_STATE_FILE}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the trainer


@register_reward("replay_test_stops")
def _stops(*, prompt, completion, answer, finished):
    """1 for a response that ends with EOS: a reward a random policy earns (non-zero advantages)."""
    return float(finished)


def _config(data_dir, steps: int):
    config = load_config("grpo_arithmetic")
    config.data.data_dir = data_dir
    config.sft.steps = 0
    config.rewards = {"replay_test_stops": 1.0}
    config.rollout = {"name": "replay", "k": 2}
    config.train.update(steps=steps, checkpoint_every=2, keep_checkpoints=3)
    config.eval.update(every=0, num_prompts=8, batch_size=8, pass_k=0)
    return config


def _final_state(workdir):
    with Checkpointer(os.path.join(workdir, "checkpoints", "main")) as ckpt:
        state, meta = ckpt.restore()
    assert meta["done"]
    return state


@pytest.mark.filterwarnings("ignore")
def test_trainer_replays_k_steps_back_and_resumes_bit_identically(tfds_dir, tmp_path, capsys):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    Trainer(_config(tfds_dir, steps=5), full).fit()
    rows = [r for r in read_metrics(full, phase="main") if "loss" in r]
    assert [r["replay/staleness"] for r in rows] == [0, 0, 2, 2, 2]
    for t in (2, 3, 4):  # the batch trained at step t is the one collected at step t − 2
        assert rows[t]["reward_mean"] == rows[t - 2]["replay/fresh_reward_mean"]
    assert os.path.exists(os.path.join(full, "checkpoints", "main", "2", HOST_STATE_FILE))

    # The same run interrupted after step 2: its later checkpoints removed, it resumes at step 2
    # with R0 and R1 in the restored buffer and must end exactly like the uninterrupted run.
    shutil.copytree(full, resumed)
    with Checkpointer(os.path.join(resumed, "checkpoints", "main")) as ckpt:
        for step in ckpt.all_steps()[1:]:
            ckpt.delete(step)
    capsys.readouterr()
    Trainer(_config(tfds_dir, steps=5), resumed).fit()
    assert "[main] resuming from the checkpoint at step 2" in capsys.readouterr().out
    a, b = _final_state(full), _final_state(resumed)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)
    assert without_timing(read_metrics(resumed)) == without_timing(read_metrics(full))
