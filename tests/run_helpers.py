"""Helpers shared by the tests that run training in a subprocess and kill it mid-way."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import jax

from jaxrl_llm.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Metrics that measure time (differ between runs of the same trajectory).
TIMING_KEYS = {
    "step_time",
    "update_time",
    "sample_time",
    "score_time",
    "rollout_time",
    "generation_tokens_per_s",
}


def load_config(name: str, arg: str | None = "smoke"):
    """`get_config(arg)` of `configs/<name>.py`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def smoke_config_name(module) -> str:
    """The smoke config an ext_algorithms module starts from: its SMOKE_CONFIG, else the first
    `configs/<name>.py:smoke` its docstring names, else grpo_arithmetic."""
    named = re.search(r"configs/(\w+)\.py:smoke", module.__doc__ or "")
    return getattr(module, "SMOKE_CONFIG", named.group(1) if named else "grpo_arithmetic")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.endswith("_time")} for r in records]


def run_script(
    script: str, workdir: str, *args: str, kill_after_step: int | None = None, phase: str = "main"
):
    """Runs `python -c script workdir *args` in the repository root with the tests' compilation
    cache. Without `kill_after_step`: waits, asserts exit 0 and returns the output. With it:
    SIGKILLs the run as soon as `workdir/metrics.jsonl` has a `phase` row at that step or later."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, workdir, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if kill_after_step is None:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
        return out.decode()
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            rows = read_metrics(path, phase=phase)
            if rows and rows[-1]["step"] >= kill_after_step:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return None
