"""A previous stage's checkpoint (``init.checkpoint``, a workdir or checkpoint folder) loaded into a
model; :mod:`mathvlm.train.build` decides the rest of where a stage's weights start.

``init.params`` maps parameter (and statistic) paths of the previous stage onto this stage's, as
comma-separated ``source:destination`` prefixes (``"image_tower:vision_tower"``: MAVIS stage 2 takes the CLIP-Math image
tower of stage 1); a bare ``prefix`` keeps its path; empty = every parameter of this model. Only the
named parameters are loaded; the rest keep their fresh initialisation.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from mathvlm import sharding
from mathvlm.train.checkpoint import saved_shapes


def param_mapping(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (s.strip() for s in spec.split(",")):
        if item:
            source, _, destination = item.partition(":")
            pairs.append((source.strip("/"), (destination or source).strip("/")))
    return pairs or [("", "")]


def is_under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def checkpoint_state_dir(location: str) -> tuple[str, int]:
    """``(…/checkpoints/<step>/state, step)`` of the newest checkpoint under a workdir or checkpoints
    folder, or of an explicit ``…/checkpoints/<step>`` folder."""
    location = os.path.abspath(location)
    for candidate in (os.path.join(location, "checkpoints"), location):
        if os.path.isdir(candidate):
            steps = sorted(int(d) for d in os.listdir(candidate) if d.isdigit())
            if steps:
                return os.path.join(candidate, str(steps[-1]), "state"), steps[-1]
    if os.path.isdir(os.path.join(location, "state")) and os.path.basename(location).isdigit():
        return os.path.join(location, "state"), int(os.path.basename(location))
    raise FileNotFoundError(f"init.checkpoint={location!r}: no finished checkpoint found (expected "
                            "<workdir>/checkpoints/<step>/state); train the previous stage first")


# What a stage takes over: the parameters and measured statistics (a VLM's calibrated feature norm).
_CARRIED = nnx.Any(nnx.Param, nnx.BatchStat)


def load_from_checkpoint(model, location: str, params: str = "") -> list[str]:
    """Overwrite ``model``'s parameters named by ``params`` with those of a previous stage's newest
    checkpoint, placed like the current ones. Returns the loaded paths; raises naming any missing or
    mis-shaped parameter."""
    state_dir, step = checkpoint_state_dir(location)
    mapping = param_mapping(params)
    model_state = nnx.state(model, _CARRIED)
    leaves = {sharding.path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(model_state)}
    wanted = {}  # source path → (destination path, current array)
    for dest, value in leaves.items():
        for source_prefix, dest_prefix in mapping:
            if is_under(dest, dest_prefix):
                source = (source_prefix + dest[len(dest_prefix):]).strip("/")
                wanted[source] = (dest, value)
                break
    if not wanted:
        raise ValueError(f"init.params={params!r} selects no parameter of this model; its top-level "
                         f"modules are {sorted({p.split('/')[0] for p in leaves})}")
    # The saved state is (model, optimizer): keep the model half, without its leading "0/".
    saved_leaves = {p[2:]: shape for p, shape in saved_shapes(state_dir).items() if p.startswith("0/")}
    missing = sorted(s for s in wanted if s not in saved_leaves)
    mismatched = sorted(f"{s} {saved_leaves[s]} vs {tuple(wanted[s][1].shape)}"
                        for s in wanted if s in saved_leaves
                        and saved_leaves[s] != tuple(wanted[s][1].shape))
    if missing or mismatched:
        raise ValueError(f"cannot initialise from {state_dir} (step {step}): "
                         f"missing there: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
                         f"shape mismatches: {mismatched[:10]}; adjust init.params")
    target: dict = {}
    for source, (_, value) in wanted.items():
        node = target.setdefault("0", {})
        for key in source.split("/"):
            node = node.setdefault(key, {})
        node["value"] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    by_dest = {}
    for source, (dest, _) in wanted.items():
        node = restored["0"]
        for key in source.split("/"):
            node = node[key]
        by_dest[dest] = node["value"]

    def replace(path, var):
        name = sharding.path_name(path)
        return var.replace(by_dest[name]) if name in by_dest else var

    nnx.update(model, jax.tree_util.tree_map_with_path(
        replace, nnx.state(model, _CARRIED), is_leaf=lambda x: isinstance(x, nnx.Variable)))
    logging.warning("initialised %d parameters from %s (step %d)", len(by_dest), state_dir, step)
    return sorted(by_dest)
