"""TPU slice topologies by name, shared by ``aot_compile.py`` and ``tpu_pod.py`` (no JAX import).

Two spellings name the same slice:

* Cloud TPU accelerator types, as ``gcloud compute tpus tpu-vm create --accelerator-type`` takes them:
  ``v4-32``, ``v5p-128``, ``v5litepod-16`` (also ``v5e-16``), ``v6e-256``. For v4 / v5p the number
  counts TensorCores (two per chip, one JAX device per chip: megacore); for v5e / v6e it counts chips.
* JAX / libtpu topology names, as ``jax.experimental.topologies.get_topology_desc`` takes them:
  ``v5e:4x4``, ``v6e:16x16``, ``v4:2x2x4``, ``v5:4x4x4`` (v5p; ``v5p:4x4x4`` is accepted too).

libtpu's ahead-of-time description of a v4 slice lists one device per TensorCore (v4:2x2x1 → 8), while
a running v4 slice has one per chip (megacore); v5p is described per chip.

    >>> t = parse("v5p-128"); t.chips, t.jax_name, t.hosts
    (64, 'v5:4x4x4', 16)
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str                   # canonical short name: v4 | v5p | v5e | v6e
    cloud_prefix: str           # accelerator-type prefix in gcloud
    jax_prefix: str             # topology-name prefix libtpu understands
    ndim: int                   # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    cores_per_chip: int         # what the number in the Cloud name counts per chip
    hbm_gib: float              # per chip
    peak_bf16_tflops: float     # per chip, dense
    # Chips per TPU-VM host: 4 on every multi-host slice; v5e / v6e have single-host 8-chip VMs.
    single_host_max: int


GENERATIONS = {
    g.name: g for g in (
        Generation("v4", "v4", "v4", 3, 2, 32.0, 275.0, 4),
        Generation("v5p", "v5p", "v5", 3, 2, 95.0, 459.0, 4),
        Generation("v5e", "v5litepod", "v5e", 2, 1, 16.0, 197.0, 8),
        Generation("v6e", "v6e", "v6e", 2, 1, 32.0, 918.0, 8),
    )
}
# Every spelling of a generation's name that either form may use.
_ALIASES = {"v4": "v4", "v5p": "v5p", "v5": "v5p", "v5e": "v5e", "v5litepod": "v5e",
            "v5lite": "v5e", "v6e": "v6e"}
# Slice sizes (chips) Cloud TPU sells for the 2-D generations.
_SIZES_2D = (1, 4, 8, 16, 32, 64, 128, 256)

EXAMPLES = "v5p-128, v5litepod-16, v6e-256, v4-32 (Cloud TPU) or v5e:2x2, v5:4x4x4, v6e:16x16 (JAX)"


class TopologyError(ValueError):
    """A topology name that names no TPU slice; the message lists what would."""


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: Generation
    dims: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.dims)

    @property
    def jax_name(self) -> str:
        return f"{self.generation.jax_prefix}:{'x'.join(map(str, self.dims))}"

    @property
    def cloud_name(self) -> str:
        g = self.generation
        return f"{g.cloud_prefix}-{self.chips * g.cores_per_chip}"

    @property
    def hosts(self) -> int:
        """TPU-VM workers, i.e. JAX processes (one per host)."""
        g = self.generation
        return 1 if self.chips <= g.single_host_max else self.chips // 4

    def describe(self) -> str:
        g = self.generation
        return (f"{self.cloud_name} = {self.jax_name}: {self.chips} chips on {self.hosts} host(s), "
                f"{g.hbm_gib:g} GiB HBM per chip")


def default_dims(generation: Generation, chips: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU gives a chip count: as square / cubic as powers of two allow, smallest
    dimension first (v5p-128 → 4x4x4, v5p-256 → 4x4x8, v5litepod-32 → 4x8)."""
    if generation.ndim == 2:
        if chips not in _SIZES_2D:
            raise TopologyError(f"{generation.cloud_prefix} slices have {', '.join(map(str, _SIZES_2D))} "
                                f"chips, not {chips}")
        side = 1 << (chips.bit_length() - 1) // 2
        return (side, chips // side)
    if chips < 4 or chips & (chips - 1):
        raise TopologyError(f"{generation.name} slices have a power-of-two number of chips ≥ 4 "
                            f"({generation.cloud_prefix}-8 and up in TensorCores), not {chips}")
    dims = [2, 2, 1]
    while math.prod(dims) < chips:
        # Double the last of the smallest dimensions, which keeps the shape sorted and near-cubic.
        smallest = min(dims)
        index = max(i for i, d in enumerate(dims) if d == smallest)
        dims[index] *= 2
        dims.sort()
    return tuple(dims)


def parse(name: str) -> Topology:
    """A :class:`Topology` from a Cloud TPU or JAX name; :class:`TopologyError` names valid ones."""
    text = name.strip().lower()
    jax_form = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", text)
    cloud_form = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not (jax_form or cloud_form):
        raise TopologyError(f"topology {name!r} is neither a Cloud TPU accelerator type nor a JAX "
                            f"topology name; examples: {EXAMPLES}")
    prefix = (jax_form or cloud_form).group(1)
    if prefix not in _ALIASES:
        raise TopologyError(f"topology {name!r}: unknown TPU generation {prefix!r}; known: "
                            f"{', '.join(sorted(GENERATIONS))} (examples: {EXAMPLES})")
    generation = GENERATIONS[_ALIASES[prefix]]
    if jax_form:
        dims = tuple(int(d) for d in jax_form.group(2).split("x"))
        if len(dims) != generation.ndim or min(dims) < 1:
            shape = "AxBxC" if generation.ndim == 3 else "AxB"
            raise TopologyError(f"topology {name!r}: {generation.name} is a {generation.ndim}-D "
                                f"torus, name it {generation.jax_prefix}:{shape} (e.g. "
                                f"{Topology(generation, default_dims(generation, 16)).jax_name})")
        return Topology(generation, dims)
    count = int(cloud_form.group(2))
    if count % generation.cores_per_chip:
        raise TopologyError(f"topology {name!r}: {generation.cloud_prefix}-N counts TensorCores, "
                            f"{generation.cores_per_chip} per chip, so N must be even")
    try:
        return Topology(generation, default_dims(generation, count // generation.cores_per_chip))
    except TopologyError as e:
        raise TopologyError(f"topology {name!r}: {e}") from None
