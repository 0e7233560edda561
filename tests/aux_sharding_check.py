"""An auxiliary reward model under a device mesh, on 8 fake CPU devices; run by
tests/test_aux_models.py in its own process (XLA_FLAGS must be set before JAX starts).

    python tests/aux_sharding_check.py WORKDIR TFDS_DIR [compilation cache dir]

Builds a Trainer (PPO rewarded by a reward-model checkpoint, tests/ext_algorithms) on a
data=2 x fsdp=2 x tensor=2 mesh, then reports the sharding spec of every array of
`trainer.aux_models['rm'].params`, and the reward of the same rows through the trainer's
(sharded) reward sources and through reward sources of the model loaded again on one device.
Asserts that the large weights are split and that the scores agree (rtol 1e-5); prints one
JSON report on stdout.
"""

from __future__ import annotations

import os
import sys

# As tests/sharding_check.py: 8 fake devices, and less LLVM optimisation (faster compiles).
FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAGS}".strip()

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxrl_llm as jrl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Heads and widths that a 2-way tensor axis and a 2-way fsdp axis both divide.
RM_SHAPE = dict(d_model=64, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=128)
ROWS, PROMPT_LEN, RESPONSE_LEN = 8, 6, 5  # rows divisible by the data x fsdp batch axes
RTOL = 1e-5


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(vocab: int):
    """Left-padded prompts and right-padded responses of random non-special tokens."""
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(3, vocab, (ROWS, PROMPT_LEN)).astype(np.int32)
    prompt_mask = (np.arange(PROMPT_LEN)[None] >= rng.integers(0, PROMPT_LEN - 1, ROWS)[:, None]).astype(
        np.int32
    )
    response_ids = rng.integers(3, vocab, (ROWS, RESPONSE_LEN)).astype(np.int32)
    response_mask = (np.arange(RESPONSE_LEN)[None] < rng.integers(1, RESPONSE_LEN + 1, ROWS)[:, None]).astype(
        np.int32
    )
    prompts = jrl.PromptBatch(
        prompt_ids * prompt_mask, prompt_mask, np.array([""] * ROWS), np.array([""] * ROWS), np.arange(ROWS)
    )
    return prompts, response_ids * response_mask, response_mask


def main() -> None:
    workdir, tfds_dir = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        jax.config.update("jax_compilation_cache_dir", sys.argv[3])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    assert jax.device_count() == 8, jax.devices()
    ext = importlib.import_module("ext_algorithms.ppo_reward_model")  # tests/ is sys.path[0]
    config = ext.configure(
        load("ppo_config", "configs/ppo_arithmetic.py").get_config("smoke"), workdir, **RM_SHAPE
    )
    config.data.data_dir = tfds_dir
    config.mesh = jrl.mesh_config(data=2, fsdp=2, tensor=2)
    trainer = jrl.Trainer(config, os.path.join(workdir, "run"))
    sharded = trainer.aux_models["rm"]
    specs = {
        "/".join(str(getattr(k, "key", k)) for k in path): {
            "spec": str(x.sharding.spec),
            "replicated": bool(x.sharding.is_fully_replicated),
            "size": int(x.size),
        }
        for path, x in jax.tree_util.tree_flatten_with_path(sharded.params)[0]
    }
    large = {name: s for name, s in specs.items() if s["size"] >= 1024}
    assert large and not any(s["replicated"] for s in large.values()), large

    single = jrl.load_aux_model("rm", config.aux_models["rm"], config.model.dtype)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(jax.device_put(single.params)))
    prompts, response_ids, response_mask = rows(sharded.config.vocab_size)
    args = (prompts, response_ids, response_mask, [""] * ROWS, np.ones(ROWS, bool))
    got = trainer.reward_sources(*args).rewards
    want = jrl.RewardSources({"rm": 1.0}, {"rm": single})(*args).rewards
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
    report = {
        "mesh": dict(trainer.partitioning.mesh.shape),
        "specs": specs,
        "sharded_scores": np.asarray(got).tolist(),
        "single_scores": np.asarray(want).tolist(),
        "max_abs": float(np.max(np.abs(np.asarray(got) - np.asarray(want)))),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
