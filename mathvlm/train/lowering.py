"""The train step lowered on abstract state: ``ShapeDtypeStruct`` model, optimizer and batch (from
``nnx.eval_shape``), so no parameters are allocated. One path for ``python -m mathvlm.bench compile``
(seconds to lower and compile, on this host) and ``launch/aot_compile.py`` (the same step compiled for
a TPU topology's mesh, placed as the trainer places it).

    abstract = abstract_train_state(config, mesh)            # mesh=None: unsharded structs
    lowered = lower_train_step(config, abstract, batch_structs(config, batch, seq, mesh)[0], mesh=mesh)
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The members of one row per step kind: each is a forward pass over its own tokens (and image).
STEP_MEMBERS = {"next_token": ("",), "pair": ("strong_", "weak_"), "preference": ("chosen_", "rejected_"),
                "grpo": ("",)}


@dataclasses.dataclass
class AbstractTrainState:
    """``nnx.split`` of the abstract ``(model, optimizer)``: ``state`` holds ``ShapeDtypeStruct`` leaves
    (with the trainer's shardings when built on a mesh; ``shardings`` is then their tree)."""
    graphdef: Any
    model_graphdef: Any
    state: Any
    trainable: Any
    model: Any
    shardings: Any = None

    def count(self, what) -> int:
        """Number of model values an ``nnx`` filter selects."""
        import jax
        from flax import nnx

        return int(sum(x.size for x in jax.tree.leaves(nnx.state(self.model, what))))

    @property
    def params(self) -> int:
        from flax import nnx

        return self.count(nnx.Param)

    @property
    def trainable_params(self) -> int:
        return self.count(self.trainable)


def abstract_train_state(config, mesh=None) -> AbstractTrainState:
    """The config's model and optimizer at random init as shapes (:func:`nnx.eval_shape`); on ``mesh``,
    each leaf carries the sharding the trainer gives it (``config.sharding.rules``)."""
    import jax
    from flax import nnx

    from mathvlm import sharding
    from mathvlm.train import optim
    from mathvlm.train.build import make_model_and_optimizer

    trainable = optim.trainable_filter(config.train.trainable)
    abstract = nnx.eval_shape(make_model_and_optimizer(config, trainable))
    graphdef, state = nnx.split(abstract)
    model_graphdef = nnx.split(abstract[0])[0]
    shardings = None
    if mesh is not None:
        shardings = sharding.state_shardings(state, mesh, config.sharding.rules)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             state, shardings)
    return AbstractTrainState(graphdef, model_graphdef, state, trainable, abstract[0], shardings)


def lower_train_step(config, abstract: AbstractTrainState, batch: dict, reference=None, mesh=None):
    """The trainer's step (:func:`mathvlm.train.loop.make_train_step`, state donated) lowered on
    ``abstract``'s state, ``batch`` and the DPO ``reference`` state (None for other steps)."""
    import contextlib

    import jax

    from mathvlm.train.loop import make_train_step

    step = make_train_step(config, abstract.graphdef, abstract.model_graphdef, abstract.trainable)
    if abstract.shardings is not None:
        jitted = jax.jit(step, out_shardings=(abstract.shardings, None), donate_argnums=0)
    else:
        jitted = jax.jit(step, donate_argnums=0)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return jitted.lower(abstract.state, batch, reference)


def batch_struct(shape, dtype, mesh=None, rules=None):
    """One abstract batch array; on ``mesh``, split over its batch axes as the trainer splits it."""
    import jax

    from mathvlm import sharding

    placed = None if mesh is None else sharding.batch_sharding(mesh, rules, len(shape))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=placed)


def image_structs(config, batch: int, mesh=None) -> dict:
    """``images`` and ``image_mask`` of a VLM's batch; nothing for a text model."""
    import jax.numpy as jnp

    if config.model.name != "vlm":
        return {}
    rules = config.sharding.rules
    size = config.data.get("image_size", 0) or config.model.get("vision", {}).get("image_size")
    return {"images": batch_struct((batch, size, size, 3), jnp.float32, mesh, rules),
            "image_mask": batch_struct((batch,), jnp.bool_, mesh, rules)}


def batch_structs(config, batch: int, seq: int, mesh=None) -> tuple[dict, int]:
    """Abstract global batch of the recipe's step kind (sharded like the trainer's on ``mesh``), and
    the number of forward passes per row."""
    import jax.numpy as jnp

    members = STEP_MEMBERS.get(config.train.step)
    if members is None:
        raise SystemExit(f"train.step={config.train.step!r}: AOT compiles the token steps "
                         f"{', '.join(STEP_MEMBERS)}")
    rules = config.sharding.rules
    out = {}
    for prefix in members:
        for key in ("tokens", "targets", "attention_mask"):
            out[prefix + key] = batch_struct((batch, seq), jnp.int32, mesh, rules)
        out[prefix + "loss_mask"] = batch_struct((batch, seq), jnp.float32, mesh, rules)
        out.update({prefix + k: v for k, v in image_structs(config, batch, mesh).items()})
    if config.train.step == "grpo":  # the sampler's log-probs and the completions' rewards
        out["old_logps"] = batch_struct((batch, seq), jnp.float32, mesh, rules)
        out["rewards"] = batch_struct((batch,), jnp.float32, mesh, rules)
    return out, len(members)
