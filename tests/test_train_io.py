"""Metrics JSONL/TensorBoard, orbax checkpoints (round trip, atomicity, retention), SIGTERM flag, plots."""

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm.train.checkpoint import COMMIT_FILE, Checkpointer
from jaxrl_llm.train.metrics import MetricsWriter, read_metrics
from jaxrl_llm.train.plots import plot_curves

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- metrics


def _read_tensorboard_scalars(logdir):
    """{tag: [(step, value)]} from the event files, without TensorFlow."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        event_accumulator = None
    if event_accumulator is not None:
        acc = event_accumulator.EventAccumulator(logdir)
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    scalars = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        offset = 0
        while offset < len(data):  # TFRecord framing: len u64, crc(len) u32, payload, crc(payload) u32
            header = data[offset : offset + 8]
            (length,) = struct.unpack("Q", header)
            assert struct.unpack("I", data[offset + 8 : offset + 12])[0] == masked_crc32c(header)
            payload = data[offset + 12 : offset + 12 + length]
            assert struct.unpack("I", data[offset + 12 + length : offset + 16 + length])[0] == masked_crc32c(
                payload
            )
            offset += 16 + length
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": np.float32(0.5), "reward_mean": jnp.float32(0.25), "tokens": np.int64(7)})
        writer.write(2, {"loss": 0.125, "bad": float("nan"), "inf": jnp.inf, "ok": True})
        writer.write(2, {"greedy_accuracy": jnp.array(0.75)}, phase="eval")
        with pytest.raises(ValueError, match="scalar"):
            writer.write(3, {"vector": np.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(3, {"step": 1})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "phase": "train", "loss": 0.5, "reward_mean": 0.25, "tokens": 7},
        {"step": 2, "phase": "train", "loss": 0.125, "bad": None, "inf": None, "ok": True},
        {"step": 2, "phase": "eval", "greedy_accuracy": 0.75},
    ]
    assert type(read_metrics(tmp_path)[0]["loss"]) is float
    assert read_metrics(tmp_path / "metrics.jsonl", phase="eval") == [
        {"step": 2, "phase": "eval", "greedy_accuracy": 0.75}
    ]

    scalars = _read_tensorboard_scalars(str(tmp_path / "tensorboard"))
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.125)]
    assert scalars["train/reward_mean"] == [(1, 0.25)]
    assert scalars["eval/greedy_accuracy"] == [(2, 0.75)]


def _write_run(writer, steps):
    for step in steps:
        writer.write(step, {"loss": 1.0 / step, "reward_mean": step * 0.1})
        if step % 3 == 0:
            writer.write(step, {"greedy_accuracy": step / 100}, phase="eval")


def test_metrics_resume_equals_uninterrupted_run(tmp_path):
    with MetricsWriter(tmp_path / "full", tensorboard=False) as writer:
        _write_run(writer, range(1, 11))

    # Killed at step 8 mid-write after the last checkpoint at step 6: lines 7-8 and a torn line.
    with MetricsWriter(tmp_path / "resumed", tensorboard=False) as writer:
        _write_run(writer, range(1, 9))
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "phase": "tr')
    with MetricsWriter(tmp_path / "resumed", tensorboard=False, resume_step=6) as writer:
        assert read_metrics(writer.path)[-1] == {"step": 6, "phase": "eval", "greedy_accuracy": 0.06}
        _write_run(writer, range(7, 11))

    full = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == full

    # truncate_after on an open writer, and a torn line is dropped even without resume_step.
    with open(tmp_path / "full" / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "pha')
    with MetricsWriter(tmp_path / "full", tensorboard=False) as writer:
        assert (tmp_path / "full" / "metrics.jsonl").read_text() == full
        writer.truncate_after(3)
        writer.write(4, {"loss": 0.0})
    assert [(r["step"], r["phase"]) for r in read_metrics(tmp_path / "full")][-3:] == [
        (3, "train"),
        (3, "eval"),
        (4, "train"),
    ]


def test_metrics_survive_sigkill(tmp_path):
    """A writer SIGKILLed mid-run leaves a readable file; resuming continues it exactly."""
    script = textwrap.dedent(
        f"""
        import itertools
        from jaxrl_llm.train.metrics import MetricsWriter
        writer = MetricsWriter({str(tmp_path)!r}, tensorboard=False)
        for step in itertools.count(1):
            writer.write(step, {{"loss": 1.0 / step, "padding": 0.5}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    path = tmp_path / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 20_000):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    records = read_metrics(path)
    assert len(records) > 100
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))

    with MetricsWriter(tmp_path, tensorboard=False, resume_step=50) as writer:
        for step in range(51, 61):
            writer.write(step, {"loss": 1.0 / step, "padding": 0.5})
    expected = [{"step": s, "phase": "train", "loss": 1.0 / s, "padding": 0.5} for s in range(1, 61)]
    assert read_metrics(path) == expected


# ---------------------------------------------------------------- checkpoints


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key
    typed_rng: jax.Array  # typed key
    step: jax.Array
    ema: jax.Array | None


def _make_state(seed=0, size=16):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "dense": {"kernel": jax.random.normal(k1, (size, size)), "bias": jnp.zeros((size,))},
        "embed": jax.random.normal(k2, (7, size)) * 1e-7,
    }
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu/nu/count
    return TrainState(
        params, opt_state, jax.random.PRNGKey(seed + 1), jax.random.key(seed + 2), jnp.int32(3), None
    )


def _assert_bit_equal(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        got, want = np.asarray(got), np.asarray(want)
        assert got.tobytes() == want.tobytes()


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    state = _make_state()
    meta = {"data_position": 123, "phase": "rl", "config": {"lr": 1e-3, "layers": [2, 4]}}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
            ckpt.restore()
        assert ckpt.save(3, state, meta, force=True)

        restored, restored_meta = ckpt.restore(abstract_state=jax.eval_shape(lambda: state))
        _assert_bit_equal(restored, state)
        assert restored_meta == meta
        assert isinstance(restored, TrainState) and restored.ema is None
        assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
        # Typed keys keep their key dtype and stay usable.
        assert jax.random.uniform(restored.typed_rng) == jax.random.uniform(state.typed_rng)

    # A new process-like instance finds it, and restores from a concrete template too.
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 3
        restored, _ = ckpt.restore(3, abstract_state=_make_state(seed=9))
        _assert_bit_equal(restored, state)


def test_checkpoint_save_every_and_retention(tmp_path):
    state = _make_state(size=4)
    with Checkpointer(tmp_path, max_to_keep=2, save_every=3) as ckpt:
        saved = [step for step in range(1, 11) if ckpt.save(step, state, {"step": step})]
        assert saved == [3, 6, 9]
        assert ckpt.save(10, state, {"step": 10}, force=True)
        assert not ckpt.save(10, state, {"step": 10}, force=True)  # already there
        assert ckpt.all_steps() == [9, 10]
        assert ckpt.restore()[1] == {"step": 10}
        assert ckpt.restore(9)[1] == {"step": 9}
    with Checkpointer(tmp_path) as ckpt:  # save_every=None: only forced saves
        assert not ckpt.save(12, state, {})
        assert ckpt.save(12, state, {}, force=True)


def test_checkpoint_crash_mid_save_keeps_previous_latest(tmp_path):
    """A process killed just before orbax's final rename leaves a tmp dir that is never loaded."""
    directory = tmp_path / "ckpt"
    script = textwrap.dedent(
        f"""
        import os
        import jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from jaxrl_llm.train.checkpoint import Checkpointer

        ckpt = Checkpointer({str(directory)!r})
        ckpt.save(1, {{"w": jnp.ones((64, 64))}}, {{"ok": 1}}, force=True)
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def crash_before_step_rename(self):
            if self.get_final().parent == ckpt.directory:  # items are finalized; now the step itself
                os._exit(17)
            await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = crash_before_step_rename
        ckpt.save(2, {{"w": jnp.zeros((64, 64))}}, {{"ok": 2}}, force=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 17, result.stderr[-2000:]
    leftovers = sorted(os.listdir(directory))
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers
    assert "2" not in leftovers

    template = {"w": jnp.zeros((64, 64))}
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore(abstract_state=template)
        assert meta == {"ok": 1} and bool(jnp.all(state["w"] == 1))
        assert ckpt.save(2, {"w": jnp.full((64, 64), 2.0)}, {"ok": 2}, force=True)  # the step is reusable
        assert ckpt.restore(abstract_state=template)[1] == {"ok": 2}
    assert not any("orbax-checkpoint-tmp" in name for name in os.listdir(directory))


def test_checkpoint_ignores_step_dir_without_commit_marker(tmp_path):
    state = _make_state(size=4)
    with Checkpointer(tmp_path, max_to_keep=5) as ckpt:
        ckpt.save(1, state, {"ok": 1}, force=True)
    # A half-copied step directory: data present, no commit marker.
    shutil.copytree(tmp_path / "1", tmp_path / "5")
    os.remove(tmp_path / "5" / COMMIT_FILE)
    with Checkpointer(tmp_path, max_to_keep=5) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.restore(abstract_state=state)[1] == {"ok": 1}
        with pytest.raises(FileNotFoundError):
            ckpt.restore(5, abstract_state=state)
        assert ckpt.save(5, state, {"ok": 5}, force=True)  # replaces the uncommitted copy
        assert ckpt.latest_step() == 5 and ckpt.restore(abstract_state=state)[1] == {"ok": 5}


def test_checkpoint_small_state_save_is_fast(tmp_path):
    params = {"w": jnp.ones((512, 512), jnp.float32)}  # 1 MiB
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, params, {}, force=True)  # first save pays one-off setup
        times = []
        for step in range(1, 4):
            start = time.perf_counter()
            ckpt.save(step, params, {"step": step}, force=True)
            ckpt.wait()
            times.append(time.perf_counter() - start)
    print(f"1 MiB save+wait: {min(times) * 1e3:.1f} ms (min of 3), {max(times) * 1e3:.1f} ms (max)")
    assert min(times) < 1.0


def test_checkpoint_rejects_abstract_mesh_shardings(tmp_path):
    mesh = jax.sharding.AbstractMesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = {"w": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=sharding)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(2)}, {}, force=True)
        with pytest.raises(ValueError, match="AbstractMesh"):
            ckpt.restore(abstract_state=abstract)


# ---------------------------------------------------------------- signals


def test_plot_curves_writes_png(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        _write_run(writer, range(1, 11))
    out = plot_curves(
        tmp_path / "metrics.jsonl",
        tmp_path / "plots" / "curves.png",
        [
            (
                "reward / accuracy",
                [("train", "reward_mean"), ("eval", "greedy_accuracy"), ("eval", "pass@8")],
            ),
            ("loss", [("train", "loss")]),
            ("kl", [("train", "kl")]),  # no data
        ],
    )
    assert out == str(tmp_path / "plots" / "curves.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 5_000
