"""Multi-process training: 2 CPU processes x 2 fake devices (one global mesh of 4, FSDP over the
processes and TP within each) run the smoke GRPO config from the command line; a SIGTERM that
only process 1 receives stops both at the same step with a collective checkpoint; the same
command resumes. Final parameters, optimiser state and metrics must equal one process with 4
fake devices on the same mesh shape. Plus the settings' resolution and errors (no processes).
"""

import json
import os
import socket
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from run_helpers import without_timing

from jaxrl_llm.data.arithmetic import prepare_arithmetic
from jaxrl_llm.distributed import DistributedSettings, distributed_config, resolve_settings
from jaxrl_llm.train.metrics import MetricsWriter
from jaxrl_llm.train.workdir import EXIT_SIGTERM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # per run of the processes
DEVICES = 4  # global mesh: data=1 x fsdp=2 x tensor=2
# Compiling dominates on 2 cores: less LLVM optimisation (both runs alike; see sharding_check.py).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
ROWS_PER_STEP = 8 * 4  # smoke config: 8 prompts x 4 samples, each scored once
SFT_STEPS, MAIN_STEPS, STOP_AFTER_MAIN_STEP = 4, 6, 3

# The entry point, plus a reward that SIGTERMs its own process at the STOP_AFTER_CALLS-th sample.
SCRIPT = """
import os, signal, sys
from absl import app
from jaxrl_llm import main as entry
from jaxrl_llm.rewards import register_reward
from jaxrl_llm.rewards.math import exact_match

calls, stop_after = 0, int(os.environ.get("STOP_AFTER_CALLS", "0"))

@register_reward("exact_match_or_stop")
def exact_match_or_stop(**sample):
    global calls
    calls += 1
    if calls == stop_after:
        os.kill(os.getpid(), signal.SIGTERM)
    return exact_match(**sample)

sys.argv = ["main", *sys.argv[1:]]
app.run(entry.main)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Run(NamedTuple):
    """Processes started by `start`; `finish` waits for them."""

    name: str
    procs: list
    logs: list


def start(workdir, data_dir, num_processes: int, stop_process_1_after_calls: int = 0) -> Run:
    """Starts the smoke GRPO config in `num_processes` processes sharing DEVICES fake devices
    (process 1 sends itself SIGTERM at its `stop_process_1_after_calls`-th scored sample)."""
    args = [
        "--config=configs/grpo_arithmetic.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.rewards={'exact_match_or_stop': 1.0}",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXRL_")}
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES // num_processes} {FAST_COMPILE}"
    port = free_port()
    procs, logs = [], []
    for i in range(num_processes):
        process_env = dict(env, STOP_AFTER_CALLS=str(stop_process_1_after_calls if i == 1 else 0))
        if num_processes > 1:
            process_env.update(
                JAXRL_COORDINATOR=f"localhost:{port}",
                JAXRL_NUM_PROCESSES=str(num_processes),
                JAXRL_PROCESS_ID=str(i),
            )
        logs.append(open(f"{workdir}.process{i}.log", "w+"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, *args],
                cwd=ROOT,
                env=process_env,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
    return Run(f"{num_processes}-process run in {os.path.basename(workdir)}", procs, logs)


def finish(run: Run, status: int = 0) -> list[str]:
    """Each process's output once all exited; fails, showing every process's output, on an
    exit status other than `status` or after TIMEOUT_S (then the processes are killed)."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and any(p.poll() is None for p in run.procs):
        time.sleep(0.2)
    timed_out = [i for i, p in enumerate(run.procs) if p.poll() is None]
    for i in timed_out:
        run.procs[i].kill()
        run.procs[i].wait()
    outputs = []
    for log in run.logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if timed_out or any(p.returncode != status for p in run.procs):
        shown = "\n".join(
            f"----- process {i} (exit {p.returncode}{', timed out' if i in timed_out else ''}):\n{out[-4000:]}"
            for i, (p, out) in enumerate(zip(run.procs, outputs, strict=True))
        )
        pytest.fail(f"the {run.name} failed:\n{shown}")
    return outputs


def metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return without_timing([json.loads(line) for line in f])


def final_state(workdir) -> dict:
    """The last main-phase checkpoint's train state, restored onto this process's one device."""
    path = os.path.join(workdir, "checkpoints", "main", str(SFT_STEPS + MAIN_STEPS), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata,
    )
    return checkpointer.restore(path, abstract)


@pytest.mark.slow  # ~80 s of two-process runs: `python -m pytest -m slow tests/test_multiprocess.py`
@pytest.mark.filterwarnings("ignore")
def test_two_processes_stop_resume_and_equal_one_process(tfds_dir, tmp_path):
    prepare_arithmetic("add3_fixed", tfds_dir)  # once, before processes that would race on it
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    # Concurrently, as a multi-process run leaves a core idle: JAX gives process 1's programs
    # other compilation-cache keys and writes the cache from process 0 only, so process 1
    # compiles every time while process 0, reading the cache, waits for it.
    reference = start(single, tfds_dir, num_processes=1)
    stopped = start(multi, tfds_dir, 2, stop_process_1_after_calls=STOP_AFTER_MAIN_STEP * ROWS_PER_STEP)
    outputs = finish(stopped, status=EXIT_SIGTERM)  # preempted: the documented status
    finish(reference)

    stop_step = SFT_STEPS + STOP_AFTER_MAIN_STEP
    for out in outputs:  # both stopped after the same step, though only process 1 got the signal
        assert f"stopped by a signal; checkpoint at step {stop_step}" in out, out[-3000:]
    assert max(r["step"] for r in metrics(multi)) == stop_step
    assert os.path.isdir(os.path.join(multi, "checkpoints", "main", str(stop_step)))

    outputs = finish(start(multi, tfds_dir, 2))  # the same command again: both resume
    for out in outputs:
        assert f"resuming from the checkpoint at step {stop_step}" in out, out[-3000:]

    # Exactly equal: every mesh axis here has 2 devices, and a sum of 2 terms does not depend on
    # the order of the reduction (gloo across processes, XLA's own within one).
    assert metrics(multi) == metrics(single)
    a, b = final_state(single), final_state(multi)
    assert int(a["step"]) == int(b["step"]) == SFT_STEPS + MAIN_STEPS
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def test_settings_come_from_the_config_then_the_environment():
    environ = {"JAXRL_COORDINATOR": "10.0.0.1:1234", "JAXRL_NUM_PROCESSES": "4", "JAXRL_PROCESS_ID": "3"}
    assert resolve_settings(None, {}) == DistributedSettings("", 1, 0)
    assert resolve_settings(distributed_config(), environ) == DistributedSettings("10.0.0.1:1234", 4, 3)
    config = distributed_config()
    config.process_id = 1
    assert resolve_settings(config, environ) == DistributedSettings("10.0.0.1:1234", 4, 1)


@pytest.mark.parametrize(
    "fields, environ, message",
    [
        (dict(num_processes=2, process_id=2), {"JAXRL_COORDINATOR": "h:1"}, r"distributed.process_id=2 is out of range for distributed.num_processes=2: process ids are 0 .. 1"),
        ({}, {"JAXRL_NUM_PROCESSES": "2", "JAXRL_PROCESS_ID": "-1"}, r"JAXRL_PROCESS_ID=-1 is out of range for JAXRL_NUM_PROCESSES=2"),
        (dict(num_processes=0), {}, r"distributed.num_processes=0: the number of processes must be at least 1"),
        (dict(num_processes=2, process_id=0), {}, r"needs a coordinator: set distributed.coordinator_address \(or JAXRL_COORDINATOR\)"),
        ({}, {"JAXRL_NUM_PROCESSES": "two"}, r"JAXRL_NUM_PROCESSES='two' must be an integer"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_field(fields, environ, message):
    config = distributed_config()
    config.update(fields)
    with pytest.raises(ValueError, match=message):
        resolve_settings(config, environ)


def test_inactive_metrics_writer_writes_nothing(tmp_path):
    """Processes other than 0 get `active=False`: the metrics are checked, no file is touched."""
    with MetricsWriter(str(tmp_path / "run"), resume_step=3, active=False) as writer:
        writer.write(1, {"loss": 0.5})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(1, {"step": 2})
    assert not os.path.exists(tmp_path / "run")
