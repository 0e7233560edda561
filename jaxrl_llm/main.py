"""Command-line entry point: `python -m jaxrl_llm.main --config=configs/<file>.py [--workdir=DIR]`.

Any config field can be overridden on the command line, e.g. `--config.algo.beta=0.02`. Training
jobs write to `--workdir` (default `runs/<config.name>`) and resume when it holds a checkpoint.

Multi-process: start the same command once per process with `--config.distributed.process_id=i`
(plus `coordinator_address`, `num_processes`), or with the environment variables
JAXRL_COORDINATOR / JAXRL_NUM_PROCESSES / JAXRL_PROCESS_ID; see jaxrl_llm/distributed.py.

Exit status (for schedulers; `jaxrl_llm/train/workdir.py`): 0 finished; 143 (128 + SIGTERM) or
130 (128 + SIGINT) stopped by that signal after writing a checkpoint: requeue the same command to
resume; 75 (`EXIT_WORKDIR_LOCKED`) another process holds the workdir; 1 any other error.
"""

import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxrl_llm.distributed import initialize_distributed
from jaxrl_llm.sample_job import run_sampling
from jaxrl_llm.train.ensemble import train_reward_ensemble
from jaxrl_llm.train.trainer import Interrupted, train
from jaxrl_llm.train.workdir import (  # noqa: F401  (the documented statuses, importable from here)
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_WORKDIR_LOCKED,
    WorkdirLockedError,
    exit_status,
)

JOBS = {"sample": run_sampling, "train": train, "reward_ensemble": train_reward_ensemble}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs (samples, logs, checkpoints).")


def main(argv):
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices on CPU
    if not flags.FLAGS["verbosity"].present:  # TFDS/orbax INFO lines drown the progress bar
        absl_logging.set_verbosity(absl_logging.WARNING)
    if not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR overrides
        # A second run reuses compiled step functions instead of compiling them again.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/jaxrl_llm/xla"))
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/sample_demo.py")
    if config.job not in JOBS:
        raise app.UsageError(f"config.job={config.job!r} is not one of {sorted(JOBS)}")
    initialize_distributed(config.get("distributed"))  # before any JAX computation
    workdir = _WORKDIR.value
    if workdir is None and config.job in ("train", "reward_ensemble"):
        workdir = os.path.join("runs", config.name)
    try:
        JOBS[config.job](config, workdir)
    except Interrupted as stop:
        print(stop, flush=True)
        sys.exit(exit_status(stop.signum))
    except WorkdirLockedError as busy:
        print(f"error: {busy}", file=sys.stderr, flush=True)
        sys.exit(EXIT_WORKDIR_LOCKED)


def _dict_fields_hint(path: str, value: str) -> str:
    """How to set a key that a dict-valued field (rewards, aux_models, ...) does not have yet."""
    parent, _, leaf = path.rpartition(".")
    hint = f"give the whole field instead: --config.{parent}=\"{{'{leaf}': {value}}}\""
    if parent == "rewards":
        from jaxrl_llm.rewards import list_rewards

        hint += f"; registered reward functions: {', '.join(list_rewards())}"
    return hint


def parse_flags(argv):
    """absl's flag parsing, with a clear error (not a bare `AttributeError: "'foo'"`) for an
    override of a config field that does not exist, e.g. a new reward name."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        missing = str(error).strip("\"'")
        for arg in argv[1:]:
            path, _, value = arg.removeprefix("--config.").partition("=")
            if arg.startswith("--config.") and missing in path.split("."):
                sys.exit(
                    f"error: {arg}: the config has no field {path!r} ({missing!r} is not one of its keys); "
                    f"check the spelling, or {_dict_fields_hint(path, value)}"
                )
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
