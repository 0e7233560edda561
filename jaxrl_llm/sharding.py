"""Device mesh, the logical-axis rule table, and the shardings of everything a step touches.

The mesh has three axes, `MESH_AXES = ('data', 'fsdp', 'tensor')`, sized by `config.mesh`
(`-1` fills the devices left). Arrays never name mesh axes directly: every model parameter
carries logical axis names (`models.transformer.logical_axes`), activations carry
`nn.with_logical_constraint(x, ('batch', 'length', 'embed' | 'mlp' | 'vocab'))`, and ONE
ordered rule table, `config.mesh.rules`, maps logical names to mesh axes, with flax's
semantics: rules are tried in order and a mesh axis already used by an earlier dimension of
the same array is skipped (so an activation ('batch', 'length', 'embed') with batch -> ('data',
'fsdp') leaves 'embed' unsharded, while the parameter ('embed', 'mlp') puts 'embed' on 'fsdp').
A dimension whose size the mesh axes do not divide keeps the longest prefix of its axes that
does, down to replication (e.g. 2 key/value heads on tensor=8 are replicated).

Everything a jitted step reads or writes gets an explicit `NamedSharding`, derived from
abstract values (`jax.eval_shape`) -> logical partition specs -> mesh specs:
  params (and the reference / critic)   the model's logical axes (`param_shardings`)
  optimiser state                       param-shaped subtrees (Adam's mu, nu) like the params,
                                        the rest (counts) replicated (`optimizer_shardings`)
  algorithm state, RNG, step, metrics   replicated (`replicated`)
  Rollout / PreferenceBatch / samples   leading axis on 'batch' (`batch_shardings`)
  sampler KV cache                      rows on 'batch', heads on 'kv_heads' (rollout/sampler.py)
`ShardedJit` jits a function with those in/out shardings and traces it under the mesh and
the rules (`activation_context`), so the model's activation constraints resolve through the
same table. The mesh may span processes (`jaxrl_llm.distributed`): host values enter it with
`to_global` (every process passes the same value and fills its own devices' shards) and leave
it with `to_host` (an all-gather when other processes hold shards).

Why one rule per logical axis (correctness; measured on JAX 0.10.2, XLA:CPU, 8 fake devices).
The XLA:CPU trap (docs/architecture.md, "Sharding") is a contraction whose two operands shard the contracted
dimension on *different* mesh axes while the batch is on 'fsdp': in a two-matmul MLP with both
weights P('fsdp', 'tensor') and the batch on ('data', 'fsdp'), the hidden state's features sit
on 'tensor' (w1's output) and w2's rows on 'fsdp'; forward and loss are right, gradients ~60%
off. An output constraint putting features on 'tensor' where the weight has them on 'fsdp' does
the same (through the backward contraction). Contractions whose operands agree on the
contracted dimension, or leave it unsharded on one side, measured correct in every combination tried.
Logical rules give exactly that when each logical name has ONE rule: an activation's 'embed' /
'mlp' / 'heads' dimension is then on the same mesh axis as the weight dimension it meets, or
unsharded because the batch, first in the table, took that axis (batch -> ('data', 'fsdp')
keeps the residual stream's 'embed' whole while the weights put it on 'fsdp': FSDP's
all-gather). A fall-back rule such as ('embed', 'tensor') after ('embed', 'fsdp'), which flax
allows, moves the activations' 'embed' to 'tensor' precisely when the batch took 'fsdp', and
reproduces the trap on this model (gradients ~100% off, even the reward model's loss), so
`validate_rules` rejects repeated logical names. Within that, the default table is the usual
Megatron/MaxText split: 'embed' on 'fsdp' (ZeRO-3-style weight sharding, gathered per matmul);
'mlp', 'heads', 'kv_heads', 'vocab' on 'tensor' (gate/up and q/k/v split their outputs, down
and o their inputs: one reduction per block); the batch on ('data', 'fsdp'). The model's
activation constraints ('batch', 'length', 'embed' | 'mlp' | 'vocab') pin the hidden states
between matmuls to the same table. tests/test_sharding.py checks loss, gradients and updated
parameters against one device for DP, FSDP, TP, FSDP+TP (batch on 'data') and DP+FSDP+TP
(batch on ('data', 'fsdp')), and that it catches the fall-back table's wrong gradients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_llm.models.config import TransformerConfig
from jaxrl_llm.models.transformer import logical_axes

MESH_AXES = ("data", "fsdp", "tensor")
# Every logical axis name the library's arrays use.
LOGICAL_AXES = ("batch", "length", "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim")
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)


class Partitioning(NamedTuple):
    """A device mesh and the (validated) logical-axis rule table mapping onto it."""

    mesh: Mesh
    rules: tuple


def mesh_config(
    data: int = -1, fsdp: int = 1, tensor: int = 1, rules=DEFAULT_RULES
) -> ml_collections.ConfigDict:
    """The `config.mesh` section: axis sizes (-1 fills the remaining devices) and the rule table."""
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=tuple(rules)))


def mesh_shape(config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes for `num_devices`, resolving one -1. Clear errors otherwise.

    The product must divide the device count; a mesh smaller than the device count uses the
    first devices.
    """
    sizes = {axis: int(config[axis]) for axis in MESH_AXES}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}={size}: use a positive size, or -1 to fill the remaining devices")
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(
            f"mesh.{fill[0]} and mesh.{fill[1]} are both -1; at most one mesh axis can fill the remaining devices"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if num_devices % fixed:
        named = " x ".join(f"mesh.{axis}={size}" for axis, size in sizes.items() if size != -1)
        raise ValueError(
            f"{named} = {fixed} does not divide the {num_devices} available devices; choose sizes whose "
            "product divides the device count (set one of them to -1 to fill)"
        )
    if fill:
        sizes[fill[0]] = num_devices // fixed
    return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh of `config.mesh` over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    if jax.process_count() > 1 and math.prod(shape) != len(devices):
        raise ValueError(
            f"the mesh {dict(zip(MESH_AXES, shape, strict=True))} uses {math.prod(shape)} of the "
            f"{len(devices)} devices, but a multi-process mesh must span every process's devices: "
            "make mesh.data x mesh.fsdp x mesh.tensor equal the device count (or set one to -1)"
        )
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[: math.prod(shape)]
    )


def validate_rules(rules) -> tuple:
    """Rules as ((logical, None | mesh axis | (mesh axes...)), ...): known logical and mesh axis
    names, one rule per logical axis (see the module docstring)."""
    out = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"mesh.rules entry {rule!r} must be a (logical axis name, mesh axes) pair")
        logical, axes = rule
        if logical not in LOGICAL_AXES:
            raise ValueError(f"mesh.rules names logical axis {logical!r}; known logical axes: {LOGICAL_AXES}")
        if logical in dict(out):
            raise ValueError(
                f"mesh.rules has two rules for {logical!r}; give each logical axis one rule (a fall-back "
                "rule lets activations and weights shard a contracted dimension on different mesh axes, "
                "which XLA differentiates wrongly; see jaxrl_llm/sharding.py)"
            )
        axes = tuple(axes) if isinstance(axes, list | tuple) else axes
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"mesh.rules maps {logical!r} to {axis!r}, which is not a mesh axis {MESH_AXES}"
                )
        out.append((logical, axes))
    return tuple(out)


def make_partitioning(config, devices: Sequence[jax.Device] | None = None) -> Partitioning | None:
    """`Partitioning` of `config.mesh`, or None when the mesh has one device (plain `jax.jit`)."""
    mesh = make_mesh(config, devices)
    rules = validate_rules(config.rules)
    return Partitioning(mesh, rules) if mesh.size > 1 else None


def spec_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh, rules) -> P:
    """Mesh PartitionSpec of an array of `shape` whose dimensions carry logical `names`.

    Rules resolve as in flax (`nn.logical_to_mesh_axes`); a dimension that its mesh axes do not
    divide keeps the longest prefix of them that does (possibly none: replicated).
    """
    if names is None or len(names) != len(shape):
        return P()
    axes = nn.logical_to_mesh_axes(tuple(names), rules)
    spec = []
    for size, dim_axes in zip(shape, axes, strict=True):
        dim_axes = () if dim_axes is None else (dim_axes,) if isinstance(dim_axes, str) else tuple(dim_axes)
        while dim_axes and size % math.prod(mesh.shape[a] for a in dim_axes):
            dim_axes = dim_axes[:-1]
        spec.append(None if not dim_axes else dim_axes[0] if len(dim_axes) == 1 else dim_axes)
    return P(*spec)


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def shardings(tree, logical_tree, partitioning: Partitioning):
    """NamedShardings for `tree` (arrays or ShapeDtypeStructs) whose leaves carry the logical
    PartitionSpecs of `logical_tree` (same structure)."""
    mesh, rules = partitioning
    return jax.tree.map(
        lambda x, names: NamedSharding(mesh, spec_for(_shape(x), names, mesh, rules)), tree, logical_tree
    )


def replicated(tree, partitioning: Partitioning):
    """A replicated NamedSharding for every leaf of `tree`."""
    return jax.tree.map(lambda _: NamedSharding(partitioning.mesh, P()), tree)


def param_shardings(
    params, model_config: TransformerConfig, partitioning: Partitioning, head: str = "causal_lm"
):
    """Shardings of `params` (concrete or abstract) of the `head` model, by its logical axes."""
    names = logical_axes(model_config, head)
    if jax.tree.structure(params) != jax.tree.structure(names):
        raise ValueError(
            f"params do not have the structure of a {head!r} model of this config; "
            f"expected {jax.tree.structure(names)}, got {jax.tree.structure(params)}"
        )
    return shardings(params, names, partitioning)


def _same_keys(names, params):
    """The part of the logical-axes tree `names` that has the (nested dict) keys of `params`."""
    if not isinstance(params, Mapping):
        return names
    return {key: _same_keys(names[key], value) for key, value in params.items()}


def optimizer_shardings(
    opt_state, params, model_config: TransformerConfig, partitioning: Partitioning, head: str = "causal_lm"
):
    """Shardings of an optax state: every subtree with the structure of `params` (Adam's mu and
    nu, ...) is sharded like the params; everything else (step counts, ...) is replicated.
    `params` may be part of the model's tree (under LoRA the optimiser sees only the adapters)."""
    names = _same_keys(logical_axes(model_config, head), params)
    treedef = jax.tree.structure(params)

    def is_params_like(x) -> bool:
        return jax.tree.structure(x) == treedef

    def shard(x):
        return shardings(x, names, partitioning) if is_params_like(x) else replicated(x, partitioning)

    return jax.tree.map(shard, opt_state, is_leaf=is_params_like)


def batch_shardings(batch, partitioning: Partitioning):
    """Shardings of a batch pytree (Rollout, PreferenceBatch, SampleOutput, prompt arrays):
    the leading axis of every array on 'batch', scalars replicated."""
    return shardings(
        batch, jax.tree.map(lambda x: P("batch", *[None] * (len(_shape(x)) - 1)), batch), partitioning
    )


@contextlib.contextmanager
def activation_context(partitioning: Partitioning) -> Iterator[None]:
    """Mesh + rules in scope, so `nn.with_logical_constraint` and `constrain` take effect."""
    with (
        jax.sharding.use_abstract_mesh(partitioning.mesh.abstract_mesh),
        nn.logical_axis_rules(partitioning.rules),
    ):
        yield


def constrain(tree, names: Sequence[str | None]):
    """`with_sharding_constraint` of every array in `tree` to the logical `names` (one per
    dimension), under the active `activation_context`; a no-op outside one."""
    rules, mesh = nn.get_logical_axis_rules(), jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return tree
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, spec_for(x.shape, names, mesh, rules)), tree
    )


def to_global(tree, shardings_tree):
    """`jax.device_put(tree, shardings_tree)` that also works when the mesh spans processes.

    With several processes, host values (numpy, Python scalars, process-local arrays) must be
    the same in every process: each process copies the slices its own devices hold
    (`jax.make_array_from_callback`, no cross-process traffic or equality check); arrays already
    on the global mesh are resharded by `jax.device_put`.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings_tree)

    def put(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree, shardings_tree)


def to_host(tree):
    """numpy copies of every array in `tree`. Arrays with shards in other processes are
    all-gathered, which is a collective: every process must call it at the same point."""

    def get(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def _abstract(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x))


class ShardedJit:
    """`jax.jit(fn)` with explicit in/out shardings computed from the abstract arguments.

    `in_shardings(*abstract_args)` returns the shardings of the arguments and
    `out_shardings(abstract_output)` those of the result (`jax.eval_shape` of `fn`); both run
    once per argument signature (tree structure, shapes, dtypes), each signature getting its own
    jitted program. Arguments are moved to their shardings first (a no-op when already there),
    and `fn` is traced under `activation_context`, so the model's constraints use the same rules.
    `compiler_options` go to `jax.jit` (e.g. `models.transformer.remat_compiler_options`).
    """

    def __init__(
        self,
        fn: Callable,
        partitioning: Partitioning,
        in_shardings: Callable[..., tuple],
        out_shardings: Callable[[Any], Any],
        donate_argnums: int | tuple[int, ...] = (),
        compiler_options: dict[str, str] | None = None,
    ):
        self.partitioning = partitioning
        self._fn, self._in, self._out, self._donate = fn, in_shardings, out_shardings, donate_argnums
        self._compiler_options = compiler_options
        self._programs: dict[Any, tuple[Any, Any]] = {}

    def _traced(self, *args):
        with activation_context(self.partitioning):
            return self._fn(*args)

    def _program(self, args):
        leaves, treedef = jax.tree.flatten(args)
        abstract_leaves = tuple(_abstract(x) for x in leaves)
        key = (treedef, abstract_leaves)
        if key not in self._programs:
            abstract = jax.tree.unflatten(treedef, abstract_leaves)
            ins = self._in(*abstract)
            outs = self._out(jax.eval_shape(self._traced, *abstract))
            jitted = jax.jit(
                self._traced,
                in_shardings=ins,
                out_shardings=outs,
                donate_argnums=self._donate,
                compiler_options=self._compiler_options,
            )
            self._programs[key] = (jitted, ins)
        return self._programs[key]

    def __call__(self, *args):
        jitted, ins = self._program(args)
        return jitted(*to_global(args, ins))

    def _cache_size(self) -> int:
        """Compiled programs, summed over signatures (as `jax.jit(...)._cache_size()`)."""
        return sum(jitted._cache_size() for jitted, _ in self._programs.values())
