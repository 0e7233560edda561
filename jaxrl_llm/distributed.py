"""Multi-process runs: `jax.distributed.initialize` from the config or the environment, and the
few host-side helpers a multi-controller trainer needs.

Multi-controller JAX: every process runs the same program. One global mesh spans the devices of
all processes (`sharding.make_mesh`); each process computes the same host values (batches from
the step, rewards from the gathered rollout, decisions) and owns the shards on its own devices
(`sharding.to_global`); values leave the mesh through `sharding.to_host`, which all-gathers
shards held by other processes. Files (metrics, summary, plots) are written by process 0 only;
orbax checkpoints are saved and restored by all processes together.

Settings come from `config.distributed` (command line: `--config.distributed.process_id=1`);
a field left unset (None) is read from its environment variable, and defaults to a
single-process run:

  coordinator_address   JAXRL_COORDINATOR     host:port of process 0's coordinator service
  num_processes         JAXRL_NUM_PROCESSES   1: no `jax.distributed` at all
  process_id            JAXRL_PROCESS_ID      0 .. num_processes - 1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import config_dict

ENV_VARS = {
    "coordinator_address": "JAXRL_COORDINATOR",
    "num_processes": "JAXRL_NUM_PROCESSES",
    "process_id": "JAXRL_PROCESS_ID",
}
T = TypeVar("T")


class DistributedSettings(NamedTuple):
    """Resolved `config.distributed`: what `jax.distributed.initialize` is called with."""

    coordinator_address: str
    num_processes: int
    process_id: int


def distributed_config() -> ml_collections.ConfigDict:
    """The `config.distributed` section; None fields are read from the environment (`ENV_VARS`)."""
    return ml_collections.ConfigDict(
        dict(
            coordinator_address=config_dict.placeholder(str),
            num_processes=config_dict.placeholder(int),
            process_id=config_dict.placeholder(int),
        )
    )


def _setting(config, field: str, environ: Mapping[str, str], default, kind):
    """(value, where it came from) of one field: the config, else its environment variable, else
    the default."""
    value = None if config is None else config.get(field)
    if value is not None:
        return kind(value), f"distributed.{field}"
    name = ENV_VARS[field]
    if environ.get(name, "") == "":
        return default, f"distributed.{field}"
    try:
        return kind(environ[name]), name
    except ValueError:
        raise ValueError(f"environment variable {name}={environ[name]!r} must be an integer") from None


def resolve_settings(config=None, environ: Mapping[str, str] | None = None) -> DistributedSettings:
    """`config.distributed` (or None) + environment -> validated settings; clear errors naming
    the config field or environment variable at fault."""
    environ = os.environ if environ is None else environ
    address, address_src = _setting(config, "coordinator_address", environ, "", str)
    processes, processes_src = _setting(config, "num_processes", environ, 1, int)
    process_id, id_src = _setting(config, "process_id", environ, 0, int)
    if processes < 1:
        raise ValueError(f"{processes_src}={processes}: the number of processes must be at least 1")
    if not 0 <= process_id < processes:
        raise ValueError(
            f"{id_src}={process_id} is out of range for {processes_src}={processes}: "
            f"process ids are 0 .. {processes - 1}"
        )
    if processes > 1 and not address:
        raise ValueError(
            f"{processes_src}={processes} needs a coordinator: set distributed.coordinator_address "
            f"(or {ENV_VARS['coordinator_address']}) to host:port of process 0, the same for every process"
        )
    return DistributedSettings(address, processes, process_id)


def initialize_distributed(config=None) -> DistributedSettings:
    """Joins the processes of a multi-process run (`jax.distributed.initialize`, gloo collectives
    on CPU); a no-op for one process. Call it before any JAX computation (it raises otherwise).

    Example (each of 2 processes, e.g. with XLA_FLAGS=--xla_force_host_platform_device_count=2):
      initialize_distributed(config.distributed)  # JAXRL_PROCESS_ID=0 / 1 in the environment
      jax.device_count()  # 4: the devices of both processes; jax.local_device_count() == 2
    """
    settings = resolve_settings(config)
    if settings.num_processes > 1:
        # Cross-process collectives on CPU (the default in JAX 0.10; named so it never changes).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(settings.coordinator_address, settings.num_processes, settings.process_id)
    return settings


def is_primary() -> bool:
    """True in process 0, the one that writes metrics, summaries and plots."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True if `flag` is true in any process (a collective: every process must call it at the
    same point); e.g. a SIGTERM seen by one process stops all of them at the same step."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def primary_first(fn: Callable[[], T]) -> T:
    """`fn()` in process 0, then in the others once it returned: for work that must not run
    concurrently, such as preparing a TFDS dataset on a shared disk."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_primary() else None
    multihost_utils.sync_global_devices("jaxrl_llm.primary_first")
    return result if is_primary() else fn()
