"""One process of a multi-process sharding check (run by tests/test_multiprocess.py through
launch/multiprocess.py): mesh over all processes' devices, a model placed with fsdp_tp rules, a
cross-process reduction of process-local rows, the replicated report. Prints one RESULT JSON line."""

import json

from mathvlm import distributed

distributed.initialize_from_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mathvlm import sharding  # noqa: E402


class Tiny(nnx.Module):
    def __init__(self, rngs):
        init = nnx.initializers.normal(1.0)
        self.up = nnx.Param(init(rngs.params(), (8, 16)), out_sharding=("embed", "mlp"))
        self.scale = nnx.Param(jnp.ones((8,)), out_sharding=("norm",))

    def __call__(self, x):
        return jnp.tanh((x * self.scale[...]) @ self.up[...])


mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
model = sharding.create_sharded(lambda: Tiny(nnx.Rngs(0)), mesh, "fsdp_tp")
report = sharding.replicated_report(nnx.state(model))

# Each process contributes its own rows; the global batch is 4 rows per process.
rank = jax.process_index()
local = np.arange(4 * 8, dtype=np.float32).reshape(4, 8) / 10 + rank
batch = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, "fsdp_tp", 2), local)
with jax.set_mesh(mesh):
    total = jax.jit(lambda m, x: m(x).sum(), out_shardings=jax.NamedSharding(mesh, jax.P()))(model, batch)

print("RESULT " + json.dumps({
    "process": rank, "processes": jax.process_count(), "devices": jax.device_count(),
    "local_devices": jax.local_device_count(), "mesh": dict(mesh.shape),
    "total": float(total), "replicated_bytes": report.replicated_bytes,
    "total_bytes": report.total_bytes, "bytes_per_device": report.bytes_per_device,
}), flush=True)
distributed.shutdown()
