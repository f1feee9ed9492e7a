"""Device mesh, logical-axis rules, placement, and the replicated-bytes report.

Model code names *logical* axes only (``("embed", "mlp")`` on a kernel, ``("batch", "length")`` on
activations). This module owns the one table that maps those names onto the three mesh axes:

* ``data``   — pure data parallelism (batch split, parameters replicated);
* ``fsdp``   — batch split *and* parameters sharded along their ``embed`` dimension (ZeRO-3 style);
* ``tensor`` — Megatron-style split of ``mlp`` / ``heads`` / ``vocab`` dimensions.

A logical name maps to ``None`` (replicated), one mesh axis, or a tuple of them. When a dimension does
not divide by the mesh axes its name maps to (a 2-head model on a 4-way ``tensor`` axis), or a mesh axis is
already used by another dimension of the same array, that dimension falls back to replicated, and
:func:`replicated_report` counts the bytes this leaves on every device.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import flax
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Models carry logical axis names only and this module places them (with a divisibility fallback).
# Flax's eager sharding would instead need a mesh and rules in context whenever a model is built.
flax.config.update("flax_always_shard_variable", False)

MESH_AXES = ("data", "fsdp", "tensor")

# Every logical name a model or pipeline may use. Parameters and activations use distinct names
# because the same dimension is split differently on weights (embed → fsdp) and activations (the
# batch already uses fsdp, so the activation's embed stays whole).
PARAM_AXES = (
    "vocab",      # vocabulary rows of token embeddings / output heads
    "embed",      # model width (d_model) of any tower
    "mlp",        # feed-forward hidden width
    "heads",      # query heads
    "kv_heads",   # key/value heads (GQA)
    "head_dim",   # per-head width
    "layers",     # stacked layer axis under nnx.scan
    "norm",       # norm scales / biases and other small vectors
    "positions",  # learned position-embedding rows
    "conv",       # patch-conv spatial dims and input channels
    "classes",    # classifier-head outputs
    "lora",       # LoRA rank
)
ACTIVATION_AXES = (
    "batch", "length", "act_embed", "act_mlp", "act_heads", "act_kv_heads", "act_vocab",
)
LOGICAL_AXES = PARAM_AXES + ACTIVATION_AXES

_BATCH = ("data", "fsdp")
_REPLICATED = {name: None for name in LOGICAL_AXES}

# Presets. Each is complete: every logical name has an entry, so a typo in a model fails loudly
# instead of silently replicating.
RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    "dp": tuple({**_REPLICATED, "batch": _BATCH}.items()),
    "fsdp": tuple({**_REPLICATED, "batch": _BATCH, "embed": "fsdp"}.items()),
    "fsdp_tp": tuple({
        **_REPLICATED, "batch": _BATCH, "embed": "fsdp",
        "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor", "vocab": "tensor",
        "act_mlp": "tensor", "act_heads": "tensor", "act_kv_heads": "tensor", "act_vocab": "tensor",
    }.items()),
}


def axis_rules(preset: str | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The rules of a preset name, or validated custom rules (a sequence of (logical, mesh axes))."""
    if isinstance(preset, str):
        if preset not in RULES:
            raise KeyError(f"unknown sharding rules preset {preset!r}; presets: {sorted(RULES)}")
        return RULES[preset]
    rules = tuple((str(name), _as_axes(axes)) for name, axes in preset)
    unknown = [name for name, _ in rules if name not in LOGICAL_AXES]
    bad_axes = [a for _, axes in rules for a in (axes or ()) if a not in MESH_AXES]
    if unknown or bad_axes:
        raise ValueError(f"invalid sharding rules: unknown logical names {unknown}, unknown mesh axes "
                         f"{bad_axes}; logical names: {LOGICAL_AXES}; mesh axes: {MESH_AXES}")
    missing = [name for name in LOGICAL_AXES if name not in dict(rules)]
    return rules + tuple((name, None) for name in missing)


def _as_axes(axes) -> tuple[str, ...] | None:
    if axes is None:
        return None
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes) or None


# ---------------------------------------------------------------------------------------------- mesh

def mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve ``{"data": -1, "fsdp": 2, "tensor": 1}`` to sizes whose product is ``num_devices``."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh config has unknown axes {unknown}; mesh axes are {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive, with at most "
                         "one -1 (fill with the remaining devices)")
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices do not divide "
                             f"by the fixed axes' product {fixed}")
        sizes[fills[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but "
                         f"{num_devices} are available; set one axis to -1 to fill")
    return tuple(sizes)


_MESH_DEVICES: contextvars.ContextVar = contextvars.ContextVar("mathvlm_mesh_devices", default=None)


@contextlib.contextmanager
def mesh_devices(devices: Sequence[jax.Device] | None):
    """Inside the block, :func:`make_mesh` without ``devices`` spans these instead of every global
    device; e.g. ``jax.local_devices()``: one independent model per process (``evaluate run`` as N
    processes, each generating its own share of the items). None changes nothing."""
    token = _MESH_DEVICES.set(None if devices is None else list(devices))
    try:
        yield
    finally:
        _MESH_DEVICES.reset(token)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types over all (global) devices, or over those
    of an enclosing :func:`mesh_devices`."""
    if devices is None:
        devices = _MESH_DEVICES.get()
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(shape, len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


# ---------------------------------------------------------------------------------- logical → mesh

def logical_to_mesh(logical: Iterable[str | None] | None, rules, *, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
    """Map a tuple of logical names to a PartitionSpec.

    With ``shape`` and ``mesh`` given, a dimension that does not divide by its mesh axes, or whose mesh
    axis an earlier dimension already took, is left unsharded.
    """
    table = dict(axis_rules(rules))
    logical = tuple(logical or ())
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known names: {LOGICAL_AXES}")
        axes = [a for a in (_as_axes(table[name]) or ()) if a not in used]
        if mesh is not None:
            axes = [a for a in axes if mesh.shape[a] > 1]
        if axes and shape is not None and mesh is not None:
            # Keep the longest prefix of axes the dimension divides by.
            while axes and shape[dim] % math.prod(mesh.shape[a] for a in axes):
                axes.pop()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*spec)


_ACTIVE_RULES: contextvars.ContextVar = contextvars.ContextVar("mathvlm_axis_rules", default=None)


@contextlib.contextmanager
def use_rules(rules):
    """Make ``rules`` the ones :func:`constrain` resolves activation names with (inside jit tracing)."""
    token = _ACTIVE_RULES.set(axis_rules(rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def activation_spec(shape: Sequence[int], logical: Sequence[str | None]) -> P | None:
    """The PartitionSpec an activation of ``shape`` with ``logical`` names gets under the active mesh
    and rules, or None when model code runs without them (eager, single device). For code that must
    name its shardings itself, e.g. a kernel wrapped in ``jax.shard_map``."""
    rules = _ACTIVE_RULES.get()
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh is None or mesh.empty:
        return None
    return logical_to_mesh(logical, rules, shape=shape, mesh=mesh)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation, by logical names. A no-op unless a mesh (``jax.set_mesh``)
    and rules (:func:`use_rules`) are active, so model code can call it unconditionally."""
    spec = activation_spec(x.shape, logical)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _logical_names(var: nnx.Variable):
    return var.get_metadata().get("out_sharding")


def state_shardings(state, mesh: Mesh, rules):
    """NamedShardings for an NNX ``State`` (or abstract state) from each variable's logical names."""
    def one(var):
        value = var.get_value()
        spec = logical_to_mesh(_logical_names(var), rules, shape=value.shape, mesh=mesh)
        return var.replace(NamedSharding(mesh, spec))
    return jax.tree.map(one, state, is_leaf=_is_variable)


def create_sharded(make_model, mesh: Mesh, rules):
    """Build the NNX object returned by ``make_model()`` with every array created in place on the mesh.

    The model is traced abstractly first, its shardings derived from the logical names, then
    initialised inside ``jax.jit`` with those output shardings, so no host ever holds the whole model.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.state(make_model())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` input array: batch over the data axes, the rest whole."""
    return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1), rules))


# ------------------------------------------------------------------------------------------ report

def path_name(path) -> str:
    """``('up', 'kernel')``-style key path of a pytree leaf as ``"up/kernel"``."""
    parts = []
    for key in path:
        part = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        if part != "value":  # nnx.Variable's own leaf
            parts.append(str(part))
    return "/".join(parts)


@dataclasses.dataclass
class ReplicationReport:
    """How parameter bytes are spread over the mesh."""
    total_bytes: int
    replicated_bytes: int          # bytes of arrays that every device holds whole
    bytes_per_device: int          # what one device holds of all parameters
    num_devices: int
    largest_replicated: list[tuple[str, tuple[int, ...], int]]  # (path, shape, bytes)

    @property
    def replicated_fraction(self) -> float:
        return self.replicated_bytes / self.total_bytes if self.total_bytes else 0.0

    def __str__(self) -> str:
        lines = [f"parameters: {self.total_bytes / 2**20:.2f} MiB total, "
                 f"{self.bytes_per_device / 2**20:.2f} MiB per device over {self.num_devices} devices, "
                 f"{100 * self.replicated_fraction:.1f}% of bytes replicated on every device"]
        for path, shape, nbytes in self.largest_replicated:
            lines.append(f"  replicated {path} {shape} {nbytes / 2**20:.3f} MiB")
        return "\n".join(lines)


def replicated_report(tree, top: int = 5) -> ReplicationReport:
    """Measure a pytree of placed arrays (an NNX State, or any pytree of jax.Arrays / ShapeDtypeStructs
    with shardings): the fraction of bytes that are replicated on every device."""
    total = replicated = per_device = 0
    num_devices = 1
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            continue
        nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            raise ValueError(f"{path_name(path)} has no sharding; place the tree first")
        num_devices = max(num_devices, len(sharding.device_set))
        shard_shape = sharding.shard_shape(tuple(leaf.shape))
        shard_bytes = int(np.prod(shard_shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        per_device += shard_bytes
        if sharding.is_fully_replicated:
            replicated += nbytes
            rows.append((path_name(path), tuple(leaf.shape), nbytes))
    rows.sort(key=lambda r: -r[2])
    return ReplicationReport(total, replicated, per_device, num_devices, rows[:top])
