"""Damaged checkpoints: every step carries content checksums (`checksums.json`, written inside
orbax's commit); a step that fails to verify or to restore is reported, moved aside to
`<dir>/corrupt/`, and the previous good step is used; with none left a clear error. End to end: a
GRPO smoke run whose latest checkpoint gets four flipped bytes reports it, resumes from the step
before, and ends bit-identical to an uninterrupted run.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_helpers import load_config, without_timing

from jaxrl_llm.rewards import register_reward
from jaxrl_llm.train.checkpoint import (
    COMMIT_FILE,
    CORRUPT_DIR,
    MANIFEST_FILE,
    Checkpointer,
    CheckpointError,
    verify_step,
)
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (2, 4, 6)


def _state(step: int) -> dict:
    """A small state whose every value is `step` (so which step was restored is visible)."""
    return {
        "w": jnp.full((128, 128), float(step), jnp.float32),
        "b": jnp.full((16,), float(step), jnp.float32),
        "step": jnp.asarray(step, jnp.int32),
    }


TEMPLATE = jax.eval_shape(lambda: _state(0))


@pytest.fixture
def saved(tmp_path):
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, max_to_keep=3) as ckpt:
        for step in STEPS:
            assert ckpt.save(step, _state(step), {"step": step}, force=True)
    return directory


def _largest_data_file(step_dir) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    return max(files, key=os.path.getsize)


def _flip(path: str, count: int = 4) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
        f.seek(0)
        f.write(data)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


DAMAGE = {
    "bit_flip": lambda step_dir: _flip(_largest_data_file(step_dir)),
    "truncated_data_file": lambda step_dir: _truncate(_largest_data_file(step_dir)),
    "deleted_METADATA": lambda step_dir: _remove(os.path.join(step_dir, "state", "_METADATA")),
    "deleted_CHECKPOINT_METADATA": lambda step_dir: _remove(os.path.join(step_dir, "_CHECKPOINT_METADATA")),
    "deleted_state_dir": lambda step_dir: _remove(os.path.join(step_dir, "state")),
}


def _assert_is_step(state, meta, step: int) -> None:
    assert meta == {"step": step}
    assert int(state["step"]) == step
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((128, 128), float(step), np.float32))


def test_every_committed_step_has_a_manifest_of_all_its_files(saved, tmp_path):
    for step in STEPS:
        step_dir = saved / str(step)
        manifest = json.loads((step_dir / MANIFEST_FILE).read_text())
        assert manifest["step"] == step and manifest["algorithm"] == "sha256"
        on_disk = {
            os.path.relpath(os.path.join(root, name), step_dir)
            for root, _, names in os.walk(step_dir)
            for name in names
        }
        assert on_disk == set(manifest["files"]) | set(manifest["present"]) | {MANIFEST_FILE, COMMIT_FILE}
        assert any("/d/" in f for f in manifest["files"])  # the data files themselves
        assert verify_step(step_dir) == []
    # Async saves write it too (in orbax's background commit).
    with Checkpointer(tmp_path / "async", async_save=True) as ckpt:
        ckpt.save(1, _state(1), {"step": 1}, force=True)
        ckpt.wait()
        assert verify_step(tmp_path / "async" / "1") == []


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_step_is_moved_aside_and_the_previous_restored(saved, damage, capsys):
    DAMAGE[damage](str(saved / "6"))
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        step, state, meta = ckpt.restore_latest_good(TEMPLATE)
        assert step == 4
        _assert_is_step(state, meta, 4)
        assert ckpt.all_steps() == [2, 4]  # orbax no longer lists it
        (aside,) = ckpt.moved_aside()
        assert aside.startswith("6-")
        assert ckpt.save(6, _state(6), {"step": 6}, force=True)  # the step number is free again
    assert os.path.isdir(saved / CORRUPT_DIR / aside / "meta")  # moved, not deleted
    out = capsys.readouterr().out
    report = [line for line in out.splitlines() if "step 6" in line and "damaged" in line]
    assert len(report) == 1, out
    assert f"moved aside to {saved / CORRUPT_DIR / aside}" in report[0]
    expected = {
        "bit_flip": "content differs from its checksum",
        "truncated_data_file": "bytes, ",
        "deleted_METADATA": "state/_METADATA: missing",
        "deleted_CHECKPOINT_METADATA": "_CHECKPOINT_METADATA: missing",
        "deleted_state_dir": "state/_METADATA: missing",
    }[damage]
    assert expected in report[0], report[0]
    assert "Traceback" not in out
    assert "falling back to step 4" in out


def test_two_damaged_steps_fall_back_two(saved, capsys):
    DAMAGE["bit_flip"](str(saved / "6"))
    DAMAGE["truncated_data_file"](str(saved / "4"))
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        step, state, meta = ckpt.restore_latest_good(TEMPLATE)
        assert step == 2 and ckpt.all_steps() == [2]
        _assert_is_step(state, meta, 2)
        assert [name.split("-")[0] for name in ckpt.moved_aside()] == ["4", "6"]


def test_no_good_step_raises_a_clear_error_and_a_rerun_does_not_start_over(saved):
    for step in STEPS:
        DAMAGE["bit_flip"](str(saved / str(step)))
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore_latest_good(TEMPLATE)
        message = str(info.value)
        assert f"no checkpoint step in {saved} could be restored" in message
        for step in STEPS:
            assert f"step {step}: damaged" in message
        assert f"delete {saved}" in message and str(saved / CORRUPT_DIR) in message
        assert ckpt.all_steps() == [] and len(ckpt.moved_aside()) == 3
    with Checkpointer(saved, max_to_keep=3) as ckpt:  # the rerun refuses too, naming the copies
        with pytest.raises(CheckpointError, match=r"no committed checkpoint step, only copies moved aside"):
            ckpt.restore_latest_good(TEMPLATE)
    with Checkpointer(saved.parent / "empty") as ckpt:  # nothing at all: a fresh start
        assert ckpt.restore_latest_good(TEMPLATE) is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax abandons reads
def test_a_changed_template_moves_nothing(saved):
    """Steps that verify but do not restore into the template: a config change, not damage."""
    other = {"w": jax.ShapeDtypeStruct((64, 128), jnp.float32), **{k: TEMPLATE[k] for k in ("b", "step")}}
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        with pytest.raises(CheckpointError, match=r"config .* differs from the one they were saved with"):
            ckpt.restore_latest_good(other)
        assert ckpt.all_steps() == list(STEPS) and ckpt.moved_aside() == []


def test_restore_of_an_explicit_damaged_step_raises_and_moves_nothing(saved):
    DAMAGE["bit_flip"](str(saved / "6"))
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 6 .* is damaged: state/.*content differs"):
            ckpt.restore(abstract_state=TEMPLATE)
        _assert_is_step(*ckpt.restore(4, abstract_state=TEMPLATE), 4)
        assert ckpt.all_steps() == list(STEPS) and ckpt.moved_aside() == []


def test_legacy_step_without_manifest_is_restored_unverified_and_falls_back_if_unreadable(saved, capsys):
    """The rule: a committed step without checksums.json (saved before they were recorded) is
    restored unverified, with a note; if orbax cannot restore it, it falls back like a damaged one."""
    for step in STEPS:
        os.remove(saved / str(step) / MANIFEST_FILE)
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        step, state, meta = ckpt.restore_latest_good(TEMPLATE)
        assert step == 6
        _assert_is_step(state, meta, 6)
    assert f"step 6 in {saved} has no {MANIFEST_FILE}" in capsys.readouterr().out

    _remove(str(saved / "6" / "state" / "_METADATA"))  # unverifiable, and orbax cannot read it
    with Checkpointer(saved, max_to_keep=3) as ckpt:
        step, state, meta = ckpt.restore_latest_good(TEMPLATE)
        assert step == 4
        _assert_is_step(state, meta, 4)
        assert ckpt.all_steps() == [2, 4] and ckpt.moved_aside()[0].startswith("6-")
    out = capsys.readouterr().out
    assert "step 6" in out and "could not be restored" in out and "Traceback" not in out


# ----------------------------------------------------------------------------- end to end


@register_reward("checkpoint_faults_stops")
def _stops(*, prompt, completion, answer, finished):
    """1 for a response that ends with EOS: a reward a random policy earns (non-zero advantages)."""
    return float(finished)


def _config(data_dir, steps: int):
    config = load_config("grpo_arithmetic")
    config.data.data_dir = data_dir
    config.sft.steps = 0
    config.rewards = {"checkpoint_faults_stops": 1.0}
    config.train.update(steps=steps, checkpoint_every=2, keep_checkpoints=3)
    config.eval.update(every=0, num_prompts=8, batch_size=8)  # before/after only: fewer compiles
    return config


def _final_state(workdir):
    with Checkpointer(os.path.join(workdir, "checkpoints", "main")) as ckpt:
        state, meta = ckpt.restore()
    assert meta["done"]
    return state


def _metrics(workdir):
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return without_timing(rows)


@pytest.mark.filterwarnings("ignore")
def test_bit_flip_in_the_latest_checkpoint_resumes_from_the_previous_and_ends_bit_identical(
    tfds_dir, tmp_path, capsys
):
    full, damaged = str(tmp_path / "full"), str(tmp_path / "damaged")
    Trainer(_config(tfds_dir, steps=8), full).fit()
    # Stopped early: checkpoints at 2 and 4, the last step (5) saved as done; then 4 bytes flip.
    Trainer(_config(tfds_dir, steps=5), damaged).fit()
    directory = os.path.join(damaged, "checkpoints", "main")
    assert Checkpointer(directory).all_steps() == [2, 4, 5]
    _flip(_largest_data_file(os.path.join(directory, "5")))
    capsys.readouterr()

    Trainer(_config(tfds_dir, steps=8), damaged).fit()  # the full length: resumes, trains to 8
    out = capsys.readouterr().out
    assert f"[checkpoint] step 5 in {directory} is damaged: state/" in out, out[-3000:]
    assert "content differs from its checksum" in out
    assert "[main] resuming from the checkpoint at step 4" in out, out[-3000:]
    (aside,) = os.listdir(os.path.join(directory, CORRUPT_DIR))
    assert aside.startswith("5-")

    a, b = _final_state(full), _final_state(damaged)
    assert int(a["step"]) == int(b["step"]) == 8
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)
    assert _metrics(damaged) == _metrics(full)


@pytest.mark.filterwarnings("ignore")
def test_damaged_earlier_phase_is_not_rerun_once_a_later_phase_has_checkpoints(tfds_dir, tmp_path, capsys):
    """The SFT phase's last (done) checkpoint is damaged while GRPO already has checkpoints: SFT
    ran to its end (its state is in GRPO's checkpoints), so it is skipped, not retrained, and no
    metrics rows are lost."""

    def config(steps):
        c = _config(tfds_dir, steps)
        c.sft.update(steps=2, eval_every=0, batch_size=8)
        return c

    full, damaged = str(tmp_path / "full"), str(tmp_path / "damaged")
    Trainer(config(6), full).fit()
    Trainer(config(6), damaged).fit()
    with Checkpointer(os.path.join(damaged, "checkpoints", "main")) as main:
        main.delete(main.latest_step())  # GRPO is interrupted: it resumes from its step-6 checkpoint
    sft_dir = os.path.join(damaged, "checkpoints", "sft")
    _flip(_largest_data_file(os.path.join(sft_dir, str(Checkpointer(sft_dir).latest_step()))))
    capsys.readouterr()
    Trainer(config(6), damaged).fit()
    assert "[sft] finished earlier: a later phase has checkpoints; skipped" in capsys.readouterr().out
    a, b = _final_state(full), _final_state(damaged)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)
    assert _metrics(damaged) == _metrics(full)
