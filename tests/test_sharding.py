"""Sharding: mesh and rule-table validation in this process (one device), and the equivalence of
sharded and single-device steps on 8 fake CPU devices, run by tests/sharding_check.py in a
subprocess (XLA_FLAGS must be set before JAX starts; this session keeps one device)."""

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxrl_llm import sharding
from jaxrl_llm.train.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = ("dp", "fsdp", "tp", "fsdp_tp", "dp_fsdp_tp")
MESH_222 = AbstractMesh((2, 2, 2), sharding.MESH_AXES)


@pytest.fixture(scope="module")
def report():
    """The JSON report of tests/sharding_check.py (one process runs every layout)."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "sharding_check.py"),
            jax.config.jax_compilation_cache_dir,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", ["grpo", "ppo", "reward_model"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_step_equals_single_device(report, layout, check):
    """Loss, gradients (read from the optimiser state of the real update) and the parameters
    after one clipped AdamW step: allclose(rtol=1e-4, atol=1e-6) to one device."""
    results = report["layouts"][layout][check]
    expected = {"loss", "grads", "params"} | (
        {"critic_loss", "critic_grads", "critic_params"} if check == "ppo" else set()
    )
    assert set(results) == expected
    off = {key: value for key, value in results.items() if value["max_ratio"] > 1}
    assert not off, f"{layout} {check}: sharded != single device: {off}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_sampler_gives_the_same_tokens(report, layout):
    result = report["layouts"][layout]["sampler"]
    assert result["same_tokens"] and result["same_mask"]
    assert result["logprobs"]["max_ratio"] <= 1


def test_layouts_really_shard(report):
    """Params, optimiser state and KV cache are split as the rules say (a replicated 'sharded'
    run would pass the equivalence tests trivially)."""
    layouts = report["layouts"]
    assert layouts["dp"]["split_fraction"]["params"] == 0  # DP replicates the weights
    for name in ("fsdp", "fsdp_tp", "dp_fsdp_tp"):  # every weight has a dimension on 'fsdp'
        assert layouts[name]["split_fraction"]["params"] == 1, name
        assert layouts[name]["split_fraction"]["opt_state"] > 0.99, name  # all but Adam's count
    assert layouts["tp"]["split_fraction"]["params"] > 0.9  # all but norms and k/v projections
    specs = layouts["dp_fsdp_tp"]["specs"]
    assert specs["gate_proj"] == specs["adam_mu_gate_proj"] == str(P("fsdp", "tensor"))
    assert specs["down_proj"] == str(P("tensor", "fsdp"))
    assert specs["q_proj"] == specs["k_proj"] == str(P("fsdp", "tensor", None))
    assert specs["adam_count"] == str(P())
    assert specs["critic_score"] == str(P("fsdp", None))
    assert specs["reward_embed"] == str(P("tensor", "fsdp"))
    assert specs["cache_prefix_k"] == specs["cache_k"] == str(P(("data", "fsdp"), "tensor"))
    # 4 key/value heads do not split 8 ways: replicated on TP=8 (query heads are split).
    assert layouts["tp"]["specs"]["k_proj"] == str(P("fsdp", None, None))
    assert layouts["tp"]["specs"]["q_proj"] == str(P("fsdp", "tensor", None))
    assert layouts["fsdp_tp"]["specs"]["cache_k"] == str(P("data", "tensor"))


def test_the_check_catches_the_xla_sharding_trap(report):
    """A fall-back rule ('embed' -> 'fsdp', then 'tensor') gives wrong gradients on XLA:CPU; the
    comparison must see it. If this fails, JAX fixed the trap (see jaxrl_llm/sharding.py)."""
    assert report["trap"]["grads"]["max_rel"] > 0.1


def test_mesh_shape_fills_one_axis_and_names_bad_fields():
    config = sharding.mesh_config
    assert sharding.mesh_shape(config(), 8) == (8, 1, 1)
    assert sharding.mesh_shape(config(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert sharding.mesh_shape(config(data=2, fsdp=1, tensor=2), 8) == (2, 1, 2)  # first 4 devices
    with pytest.raises(
        ValueError, match=r"mesh.data=3 x mesh.fsdp=1 x mesh.tensor=1 = 3 does not divide the 8"
    ):
        sharding.mesh_shape(config(data=3), 8)
    with pytest.raises(ValueError, match="mesh.data and mesh.tensor are both -1"):
        sharding.mesh_shape(config(data=-1, tensor=-1), 8)
    with pytest.raises(ValueError, match="mesh.fsdp=0"):
        sharding.mesh_shape(config(fsdp=0), 8)


def test_rules_are_validated():
    rules = sharding.validate_rules([["batch", ["data", "fsdp"]], ("embed", "fsdp")])
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"))
    with pytest.raises(ValueError, match="logical axis 'embd'"):
        sharding.validate_rules((("embd", "fsdp"),))
    with pytest.raises(ValueError, match="'model', which is not a mesh axis"):
        sharding.validate_rules((("mlp", "model"),))
    with pytest.raises(ValueError, match="two rules for 'embed'"):
        sharding.validate_rules((("embed", "fsdp"), ("embed", "tensor")))


@pytest.mark.parametrize(
    "shape, names, expected",
    [
        ((8, 64), ("batch", "embed"), P(("data", "fsdp"), None)),  # the batch took 'fsdp'
        ((6, 64), ("batch", "embed"), P("data", None)),  # 6 rows: 'data' only
        ((3, 64), ("batch", "embed"), P(None, None)),  # replicated, not an error
        ((64, 128), ("embed", "mlp"), P("fsdp", "tensor")),
        ((64, 3, 8), ("embed", "kv_heads", "head_dim"), P("fsdp", None, None)),
        ((5,), None, P()),
    ],
)
def test_spec_for_resolves_rules_and_falls_back_on_indivisible_sizes(shape, names, expected):
    assert sharding.spec_for(shape, names, MESH_222, sharding.DEFAULT_RULES) == expected


def test_one_device_means_plain_jit():
    """The default config on one device builds no partitioning: the trainer and sampler keep
    their plain `jax.jit` (unchanged behaviour and speed)."""
    assert jax.device_count() == 1
    assert sharding.make_partitioning(base_config().mesh) is None
