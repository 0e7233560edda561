"""Orbax checkpoints of the train state plus a JSON `meta` dict, verified by content checksums
and falling back to the previous good step; and a SIGTERM-to-flag helper.

Layout: `directory/<step>/{state, meta, checksums.json, commit_success.txt, _CHECKPOINT_METADATA}`
(and `host_state.npz` when saved with a `host_state`), plus `directory/corrupt/<step>-<time>/`
for steps moved aside as damaged.

Host state. `save(..., host_state={name: numpy array})` also writes the flat dict as
`host_state.npz` (`numpy.savez`, no pickle) into the step directory, inside the same commit:
the temporary-path class writes it just before the manifest, so it is listed in
`checksums.json` and verified like every other file. `restore` / `restore_latest_good` return
it in `meta[HOST_STATE_KEY]` (absent when the step has none). The trainer keeps a rollout
strategy's state there (`RolloutStrategy.init_state`: replay buffers and the like).

Atomicity comes from orbax: a step is written into `<step>.orbax-checkpoint-tmp`, gets
`commit_success.txt`, and is then renamed to `<step>` (one atomic rename on local disks). A crash
mid-save leaves only the temporary directory, which orbax never lists and deletes on the next start.
On top of that `latest_step()` only counts step directories holding `commit_success.txt`, so a step
directory copied half-way (rsync, `cp -r` interrupted) is never restored either.

Checksums. orbax checks no data file's content (four flipped bytes in a data file restore
silently as wrong weights; a truncated one raises deep inside tensorstore). So every step carries
`checksums.json`: `{"format": "jaxrl_llm.checkpoint.checksums/1", "algorithm": "sha256",
"step": 8, "files": {"state/_METADATA": {"size": 594, "sha256": "<hex>"}, ...}, "present":
["_CHECKPOINT_METADATA"]}`, listing every file of the step by its path relative to the step
directory. It is written inside orbax's commit: by the temporary-path class given to orbax
(`_ChecksummedTemporaryPath`), whose `finalize` hashes the temporary directory after every
process's shards and orbax's own metadata are written and then lets orbax commit it (the commit
file and the rename). So a committed step always has its manifest, there is no window between
commit and manifest, async saves hash in orbax's background thread, and in a multi-process run
only process 0 (the one orbax finalizes on, after its barrier) writes it. Only the step's own
`_CHECKPOINT_METADATA`, which orbax rewrites with the commit time during that commit, is recorded
by presence (and must parse as JSON) instead of by content; `commit_success.txt` is written after
the manifest and is what makes a step listed at all. Hashing reads back the files just written
(page cache; sha256 ran at ~1.7 GB/s per core here, 8 files at a time).
The hook rides on orbax's `TemporaryPath.finalize` (a private API; orbax is pinned < 0.13), and
tests/test_checkpoint_faults.py fails if a committed step lacks its manifest.

Restore. `restore_latest_good` (what the trainer uses) verifies the latest committed step, every
process checking every file (and all of them agreeing); a step that fails to verify, or whose
restore raises, is reported in one line (the step, the files that differ or the error) and moved
aside to `directory/corrupt/<step>-<YYYYmmddTHHMMSS>` (renamed, never deleted; orbax no longer
lists it), and the previous committed step is tried. A step that verifies but does not restore is
moved aside only once an older step did restore into the same template (so a changed config,
which breaks every step alike, moves nothing). If no step restores, `CheckpointError` names the
directory, every step tried and why, and the fix; so does a rerun that finds only moved-aside
copies (it does not silently start the phase over). `restore(step)` verifies too, but raises
`CheckpointError` instead of moving anything (for inspection).

Legacy rule: a committed step without `checksums.json` (saved before checksums were recorded, or
by plain orbax) is restored unverified, with a one-line note; if its restore raises it falls
back like a damaged step. A step whose manifest is unreadable counts as damaged.

In a run of several processes (`jaxrl_llm.distributed`) every process calls `save` and `restore`
with the same arguments: orbax writes each process's shards, process 0 the metadata, the manifest
and the commit, on a directory all of them see; process 0 moves damaged steps aside. (A restore
that raises in only some processes is agreed on afterwards; one that hangs in orbax's collectives
is not detected.)

Saves are synchronous by default: on CPU an async save of a ~3 MB state returned after ~5 ms but
finished after ~25 ms, against ~20 ms for a blocking save, and the background writer competes with
the training step for the same two cores. Synchronous also means "save() returned" == "checkpoint
committed", which is what the SIGTERM path and the kill test rely on. `async_save=True` is there
for large states on accelerators.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.path import atomicity_defaults

COMMIT_FILE = "commit_success.txt"
MANIFEST_FILE = "checksums.json"
MANIFEST_FORMAT = "jaxrl_llm.checkpoint.checksums/1"
HOST_STATE_FILE = "host_state.npz"  # `save(host_state=...)`, inside the step directory
HOST_STATE_KEY = "host_state"  # where `restore` returns it in `meta`
CORRUPT_DIR = "corrupt"  # damaged steps are moved here, as `<step>-<time>`
# Files of a step directory the manifest records by presence only: orbax rewrites the step's
# metadata (its commit time) while committing, after the manifest is written.
_PRESENCE_ONLY = ("_CHECKPOINT_METADATA",)
_MAX_LISTED = 5  # problems named per step in a report line
_HASH_THREADS = 8
_POOL_BYTES = 64 << 20  # steps smaller than this are hashed in one thread


class CheckpointError(RuntimeError):
    """A checkpoint step is damaged, or no step of a directory can be restored."""


def _digest(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digests(step_dir: epath.Path, rels: list[str], total_bytes: int) -> list[str]:
    """Digests of `step_dir/rel` for each rel; large steps several files at a time (hashlib
    releases the GIL), small ones in this thread (a pool costs more than they take)."""
    if total_bytes < _POOL_BYTES:
        return [_digest(step_dir / rel) for rel in rels]
    with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
        return list(pool.map(lambda rel: _digest(step_dir / rel), rels))


def _step_files(step_dir: epath.Path) -> list[str]:
    """Paths (relative, '/'-separated) of every file under `step_dir` the manifest covers."""
    skip = {MANIFEST_FILE, COMMIT_FILE, *_PRESENCE_ONLY}
    files, pending = [], [(step_dir, "")]
    while pending:  # epath has no recursive glob on every backend
        folder, prefix = pending.pop()
        for path in folder.iterdir():
            rel = prefix + path.name
            if path.is_dir():
                pending.append((path, rel + "/"))
            elif rel not in skip:
                files.append(rel)
    return sorted(files)


def write_manifest(step_dir: str | epath.PathLike, step: int | None = None) -> dict:
    """Writes `step_dir/checksums.json` over the files now in `step_dir`; returns it.

    Called by the checkpointer inside orbax's commit; exposed for tests and tools.
    """
    step_dir = epath.Path(step_dir)
    rels = _step_files(step_dir)
    sizes = [(step_dir / rel).stat().length for rel in rels]
    digests = _digests(step_dir, rels, sum(sizes))
    files = {rel: {"size": size, "sha256": d} for rel, size, d in zip(rels, sizes, digests, strict=True)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "algorithm": "sha256",
        "step": step,
        "files": files,
        "present": [name for name in _PRESENCE_ONLY if (step_dir / name).exists()],
    }
    # Written inside the uncommitted step (not listed until orbax's commit), so a torn manifest can
    # only ever be in a temporary directory; no tmp + rename needed.
    (step_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify_step(step_dir: str | epath.PathLike) -> list[str] | None:
    """Problems of a step directory against its manifest: [] if it verifies, None if it has none.

    Each problem is one short phrase naming a file ("state/d/ab12: content differs from its
    checksum", "state/_METADATA: missing", ...). Files the manifest does not list are ignored.
    """
    step_dir = epath.Path(step_dir)
    path = step_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            return [f"{MANIFEST_FILE}: unknown format {manifest.get('format')!r}"]
        files, present = dict(manifest["files"]), list(manifest["present"])
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        return [f"{MANIFEST_FILE}: unreadable ({type(e).__name__})"]
    problems, same_size = [], []
    for rel, want in sorted(files.items()):
        file = step_dir / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = file.stat().length
        if size != want["size"]:
            problems.append(f"{rel}: {size} bytes, {want['size']} when saved")
        else:
            same_size.append(rel)
    total = sum(files[rel]["size"] for rel in same_size)
    for rel, digest in zip(same_size, _digests(step_dir, same_size, total), strict=True):
        if digest != files[rel]["sha256"]:
            problems.append(f"{rel}: content differs from its checksum")
    for rel in present:
        file = step_dir / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{rel}: not valid JSON")
    return problems


def _checksummed_path_class(directory: epath.Path, extra_files: dict | None = None) -> type:
    """orbax's temporary-path class for `directory`, writing the manifest just before the commit.
    `extra_files`: step -> {file name: bytes} written into the step directory first (popped)."""
    base = atomicity_defaults.get_default_temporary_path_class(directory)
    extra_files = {} if extra_files is None else extra_files

    def write(step_dir: epath.Path, step: int) -> None:
        for name, data in extra_files.pop(step, {}).items():
            (step_dir / name).write_bytes(data)
        write_manifest(step_dir, step)

    class _ChecksummedTemporaryPath(base):
        async def finalize(self, *args, **kwargs):
            final = self.get_final()
            if final.name.isdigit():  # the step directory (items, such as `state/`, commit inside it)
                await asyncio.to_thread(write, self.get(), int(final.name))
            await super().finalize(*args, **kwargs)

    return _ChecksummedTemporaryPath


def _host_state_bytes(host_state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    arrays = {str(k): np.asarray(v) for k, v in host_state.items()}
    for key, value in arrays.items():
        if value.dtype.hasobject:
            raise TypeError(
                f"host_state[{key!r}] has dtype {value.dtype}: host state is saved without pickle, so it must "
                "be numeric, bool or fixed-width str arrays"
            )
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _read_host_state(step_dir: epath.Path) -> dict | None:
    path = step_dir / HOST_STATE_FILE
    if not path.exists():
        return None
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _report(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[checkpoint] {message}", flush=True)


class _DropOrbaxInfo(logging.Filter):
    """Drops orbax's INFO/DEBUG records (hundreds per save); keeps warnings and everyone else's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname.replace("\\", "/")


def _quiet_orbax() -> None:
    # orbax logs through absl's logger; a filter leaves the user's absl verbosity untouched.
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxInfo())


def _listed(problems: list[str]) -> str:
    more = len(problems) - _MAX_LISTED
    return "; ".join(problems[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def _check_concrete_shardings(abstract_state: Any) -> None:
    for leaf in jax.tree.leaves(abstract_state):
        mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
        if isinstance(mesh, jax.sharding.AbstractMesh):
            raise ValueError(
                "abstract_state carries an AbstractMesh sharding (jax.eval_shape of sharded arrays "
                "gives those); pass a concrete template state, or ShapeDtypeStructs whose sharding "
                "is a NamedSharding on a real jax.sharding.Mesh."
            )


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of `(state, meta)` under `directory`.

    Example:
      ckpt = Checkpointer(workdir + "/checkpoints", save_every=100)
      restored = ckpt.restore_latest_good(abstract_state=state)  # `state` = fresh template
      if restored is not None:  # damaged newer steps were reported and moved to corrupt/
          step, state, meta = restored
      ...
      ckpt.save(step, state, {"data_position": pos})
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_every: int | None = None,
        async_save: bool = False,
    ):
        """`save_every=None`: only `save(..., force=True)` writes; `max_to_keep=None`: keep all."""
        _quiet_orbax()
        self.directory = epath.Path(directory)
        self.save_every = save_every
        self._extra_files: dict[int, dict[str, bytes]] = {}  # step -> files written in its commit
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            cleanup_tmp_directories=True,  # removes what a crashed save left behind
            enable_async_checkpointing=async_save,
            # writes host_state.npz and checksums.json
            temporary_path_class=_checksummed_path_class(self.directory, self._extra_files),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return sorted(
            s for s in self._manager.all_steps() if (self.directory / str(s) / COMMIT_FILE).exists()
        )

    def latest_step(self) -> int | None:
        return max(self.all_steps(), default=None)

    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping[str, Any] | None = None,
        force: bool = False,
        host_state: Mapping[str, Any] | None = None,
    ) -> bool:
        """Saves when `step % save_every == 0` or `force`; False if skipped or `step` is already saved.

        `meta` must be JSON-serialisable (tuples come back as lists). `host_state`: a flat dict
        of numpy arrays written as `host_state.npz` in the same commit (module docstring);
        `restore` returns it as `meta[HOST_STATE_KEY]`.
        """
        if not force and (self.save_every is None or step % self.save_every):
            return False
        if step in self.all_steps():
            return False
        leftover = self.directory / str(step)
        if leftover.exists():  # an uncommitted copy that restore() ignores; make room for the real one
            if jax.process_index() == 0:
                logging.getLogger(__name__).warning("removing uncommitted checkpoint directory %s", leftover)
                shutil.rmtree(leftover)
            multihost_utils.sync_global_devices("jaxrl_llm.checkpoint.leftover")
            self._manager.reload()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))
        )
        if host_state is not None:  # serialised now: the caller may change its arrays after save()
            data = _host_state_bytes(host_state)
            if jax.process_index() == 0:  # the process orbax finalizes (commits) the step on
                self._extra_files[step] = {HOST_STATE_FILE: data}
        saved = bool(self._manager.save(step, args=args, force=True))
        if not saved:
            self._extra_files.pop(step, None)
        return saved

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def verify(self, step: int) -> list[str] | None:
        """Problems of `step` against its checksums ([] = verifies; None = no manifest, legacy)."""
        return verify_step(self.step_dir(step))

    def moved_aside(self) -> list[str]:
        """Names of the step copies moved aside as damaged (under `directory/corrupt`)."""
        corrupt = self.directory / CORRUPT_DIR
        return sorted(p.name for p in corrupt.iterdir()) if corrupt.is_dir() else []

    def restore(self, step: int | None = None, abstract_state: Any = None) -> tuple[Any, dict]:
        """Returns `(state, meta)` of `step` (default: latest committed), verified.

        `abstract_state` is a template (concrete state or `jax.eval_shape` output) fixing the
        pytree structure (NamedTuples, None leaves), dtypes (typed PRNG keys) and shardings.
        Without it orbax rebuilds plain dicts/lists. A step whose files differ from its checksums
        raises `CheckpointError` (nothing is moved: `restore_latest_good` is the falling-back one).
        """
        self.wait()
        steps = self.all_steps()
        step = steps[-1] if step is None and steps else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no committed checkpoint for step {step} in {self.directory}; have {steps}"
            )
        _check_concrete_shardings(abstract_state)
        problems = self._agreed_problems(step)
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is damaged: {_listed(problems)}"
            )
        return self._restore_step(step, abstract_state)

    def restore_latest_good(self, abstract_state: Any = None) -> tuple[int, Any, dict] | None:
        """`(step, state, meta)` of the latest step that verifies and restores; None if there is none.

        Newer steps that fail are reported and moved aside to `directory/corrupt/` (see the
        module docstring). Raises `CheckpointError` when steps exist but none restores, or when
        there are only moved-aside copies.
        """
        self.wait()
        _check_concrete_shardings(abstract_state)
        steps = self.all_steps()
        if not steps:
            aside = self.moved_aside()
            if aside:
                raise CheckpointError(
                    f"{self.directory} holds no committed checkpoint step, only copies moved aside as "
                    f"damaged: {self.directory / CORRUPT_DIR} has {aside}. Nothing is resumed from them; "
                    f"to start this phase over delete (or move away) {self.directory / CORRUPT_DIR}, or "
                    "repair a copy and move it back as <step>."
                )
            return None
        tried, unrestorable = [], []
        for step in reversed(steps):
            problems = self._agreed_problems(step)
            if problems:
                where = self._move_aside(step)
                _report(
                    f"step {step} in {self.directory} is damaged: {_listed(problems)}; moved aside to {where}"
                )
                tried.append(f"step {step}: damaged ({_listed(problems)}), moved aside to {where}")
                continue
            if problems is None:
                _report(
                    f"step {step} in {self.directory} has no {MANIFEST_FILE} (saved before checksums "
                    "were recorded): restoring it unverified"
                )
            error = None
            try:
                state, meta = self._restore_step(step, abstract_state)
            except Exception as e:  # noqa: BLE001 -- any failure to read the step falls back
                error = e
            if _any_process(error is not None):
                reason = _one_line(error) if error is not None else "failed in another process"
                _report(f"step {step} in {self.directory} could not be restored: {reason}")
                unrestorable.append(step)
                tried.append(f"step {step}: restore failed ({reason})")
                continue
            for bad in unrestorable:  # an older step restored into this template: they are damaged
                where = self._move_aside(bad)
                _report(f"step {bad} moved aside to {where}")
            if tried:
                _report(f"falling back to step {step}, the latest good one in {self.directory}")
            return step, state, meta
        advice = (
            "Steps whose files match their checksums (or have none) but fail to restore usually mean the run's "
            "config (model shape, optimiser, algorithm) differs from the one they were saved with: "
            "restore it, or use a new --workdir. "
            if unrestorable
            else ""
        )
        aside = f" (the moved-aside copies, kept for inspection, are in {self.directory / CORRUPT_DIR})"
        raise CheckpointError(
            f"no checkpoint step in {self.directory} could be restored; tried {len(tried)}:\n  "
            + "\n  ".join(tried)
            + f"\n{advice}To start this phase over, delete {self.directory}"
            + (aside if self.moved_aside() else "")
            + "."
        )

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        meta = restored.meta
        host_state = _read_host_state(self.step_dir(step))
        if host_state is not None:
            meta = {**meta, HOST_STATE_KEY: host_state}
        return restored.state, meta

    def _agreed_problems(self, step: int) -> list[str] | None:
        """`verify(step)` in every process; damaged if damaged in any (all agree)."""
        problems = self.verify(step)
        if _any_process(bool(problems)) and not problems:
            problems = ["damaged as seen by another process"]
        return problems

    def _move_aside(self, step: int) -> epath.Path:
        """Renames `<step>` to `corrupt/<step>-<time>` (process 0); orbax then no longer lists it."""
        corrupt = self.directory / CORRUPT_DIR
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = corrupt / f"{step}-{stamp}"
        if jax.process_index() == 0:
            corrupt.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():
                n += 1
                target = corrupt / f"{step}-{stamp}-{n}"
            self.step_dir(step).rename(target)
        _sync(f"jaxrl_llm.checkpoint.moved_aside.{step}")
        self._manager.reload()
        return target

    def delete(self, step: int) -> None:
        """Deletes committed `step` (to save it again: orbax never overwrites a step)."""
        self.wait()
        self._manager.delete(step)

    def wait(self) -> None:
        """Blocks until an in-flight async save is committed (no-op for synchronous saves)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
