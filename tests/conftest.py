"""Test setup: 8 fake CPU devices before jax initialises, offline hub, parsed absl flags, fixed seeds."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's multiprocessing reads absl flags; without this it raises UnparsedFlagAccessError.
flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` first (stable otherwise): xdist hands out tests in this order, and a
    multi-minute test collected last leaves the other worker idle while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    yield
