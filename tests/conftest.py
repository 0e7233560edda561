"""Shared pytest setup: persistent compilation cache and session-scoped tiny models."""

import os

# Compiles dominate this suite on 2 cores. XLA's backend optimisation level 0 compiles the same
# programs with about a third less CPU (test_trainer + test_microbatch_invariance with cold
# caches: 246 s -> 163 s of CPU); the suite tests values, never speed. Set before JAX starts
# its backend; subprocesses and notebook kernels inherit it. An explicit level is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxrl_llm.models.config import TransformerConfig  # noqa: E402
from jaxrl_llm.models.transformer import init_params  # noqa: E402


def pytest_configure(config):
    # Compiles dominate this suite on 2 cores; a second run reuses them from disk.
    cache_dir = os.path.join(str(config.rootpath), ".pytest_cache", "jax_compilation_cache")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


TINY_LLAMA = TransformerConfig(
    vocab_size=97, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128, init_std=0.1
)


@pytest.fixture(scope="session")
def tiny_config():
    """A 2-layer GQA Llama config with a peaked random init (init_std 0.1)."""
    return TINY_LLAMA


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
    return init_params(tiny_config, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data dir per session: the arithmetic dataset is prepared once (~10 s)."""
    return str(tmp_path_factory.mktemp("tfds"))
