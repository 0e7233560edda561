"""jaxrl_llm: JAX-native reinforcement learning and preference optimisation of language models."""

from setuptools import find_packages, setup

# Ranges are the ones measured to work together on Python 3.11 (docs/architecture.md, "Platform").
# TensorFlow is deliberately absent: TFDS is used only through array_record data sources.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "chex>=0.1.92,<0.2",
    "ml-collections>=1.1.0,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8.6,<0.9",
    "grain>=0.2.18,<0.3",
    "tokenizers>=0.22,<0.24",
    "jinja2>=3.1,<4",  # chat templates
    "ml-dtypes>=0.5",  # bfloat16 safetensors on the host
    "safetensors>=0.6,<0.9",
    "absl-py>=2.1,<3",
    "tqdm>=4.66,<5",
    "numpy>=2.0,<3",
    "importlib_resources>=6",  # TFDS 4.9 imports it to locate builders but declares it only for py<3.9
    "tensorboardX>=2.6,<3",  # TensorBoard event files without TensorFlow
    "matplotlib>=3.9,<4",  # the reward/accuracy curves every training run writes
]

# torch is pinned to a CPU-only release for the parity tests and benchmarks: an unpinned torch
# (asked for directly or by transformers/trl) resolves to a multi-GB CUDA build on Linux.
TORCH = "torch==2.13.0"

NOTEBOOKS = ["ipykernel>=6.29,<8", "nbclient>=0.10,<1", "nbformat>=5.10,<6"]

EXTRAS = {
    "notebooks": NOTEBOOKS,
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",
        TORCH,
        "transformers>=5.0,<6",
        "ruff>=0.15,<1",
        *NOTEBOOKS,
    ],
    "bench": [
        TORCH,
        "transformers>=5.0,<6",
        "trl>=1.0,<2",
    ],
}

setup(
    name="jaxrl_llm",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["jaxrl_llm", "jaxrl_llm.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
