"""Joining a multi-process (multi-host) run, configured from the environment.

* ``launch/multiprocess.py`` (N processes on one machine, gloo CPU collectives) sets
  ``MATHVLM_COORDINATOR``, ``MATHVLM_NUM_PROCESSES``, ``MATHVLM_PROCESS_ID`` and, for fake CPU devices,
  ``MATHVLM_LOCAL_DEVICES``.
* On TPU pod slices and SLURM clusters ``MATHVLM_DISTRIBUTED=auto`` lets
  ``jax.distributed.initialize()`` read everything from the cluster environment.

``initialize_from_env`` must run before anything touches a JAX device; ``shutdown`` ends the run.
"""

from __future__ import annotations

import os

import jax


def initialize_from_env() -> bool:
    """Initialise ``jax.distributed`` when the environment asks for it; True if it did."""
    coordinator = os.environ.get("MATHVLM_COORDINATOR")
    if coordinator:
        local_devices = os.environ.get("MATHVLM_LOCAL_DEVICES")
        if local_devices:
            jax.config.update("jax_num_cpu_devices", int(local_devices))
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["MATHVLM_NUM_PROCESSES"]),
            process_id=int(os.environ["MATHVLM_PROCESS_ID"]))
        return True
    if os.environ.get("MATHVLM_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    return False


def shutdown() -> None:
    """Leave a multi-process run: wait for this process's outstanding device work, then disconnect.

    Why wait: reading a replicated result (``float(x)``) waits for one local shard only, while the
    other local devices may still be inside a collective, or still connecting their gloo communicator
    through the coordination service. Shutting the service down under them left both processes hung
    at exit, joining those device threads (tests/test_multiprocess.py, about 1 run in 40).
    """
    for array in jax.live_arrays():
        array.block_until_ready()
    jax.distributed.shutdown()
