"""The one model builder: every tool that needs a model (trainer, ``evaluate``, ``dpo_pairs``,
``select``, ``convert export``, the tests) gets it from :func:`init_model`.

    model = init_model(config, mesh)                       # a stage's starting weights
    model = init_model(config, mesh, restore="runs/x")     # the model a run trained, every parameter

In order: the architecture (the model registry at random init, or ``init.hf``, a transformers folder);
the previous stage's checkpoint (``init.checkpoint``, the parameters ``init.params`` names); LoRA
adapters (``config.lora``); placement of every parameter by its logical axes. The optimizer is the
trainer's business.

A previous stage that trained LoRA adapters saved ``…/q_proj/base/kernel``, ``lora_a`` and ``lora_b``.
``init.lora`` says what the next stage does with them:

* ``continue`` (default, as MAVIS stages 2 → 3 → 4): the same adapters keep training. Needs this
  stage's ``lora.rank`` to equal the saved rank; when this stage has no LoRA they are merged instead.
* ``merge``: ``W + (alpha/rank)·A·B`` is folded into each base kernel (alpha from the previous run's
  ``config.json``), then this stage adds fresh adapters if it has any.
"""

from __future__ import annotations

import re

import jax
from absl import logging
from flax import nnx

from mathvlm import config as mc
from mathvlm import registry, sharding
from mathvlm.train import warm_start

LORA_MODES = ("continue", "merge")


def build_model(model_config, seed: int):
    """The registered model ``model_config.name`` called with the config's other keys."""
    kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
    return registry.get("model", model_config.name)(**kwargs, rngs=nnx.Rngs(seed))


def hf_options(model_config) -> dict:
    """``config.model`` keys other than ``name`` / ``preset``: loader options (dtype, scan_layers,
    remat... of the language model; ``vision: {scan_layers, remat, dtype, param_dtype}`` of a VLM's
    image tower — see :func:`mathvlm.hf.from_pretrained`)."""
    return {k: v for k, v in model_config.to_dict().items() if k not in ("name", "preset")}


def add_lora(model, config):
    """LoRA adapters of ``config.lora`` (none at rank 0), after the starting weights are in: the adapter
    wraps the loaded kernel, and B = 0 keeps the model's outputs unchanged."""
    lora = config.get("lora", None)
    if lora and lora.rank:
        from mathvlm.models.lora import apply_lora

        apply_lora(model, rank=lora.rank, alpha=lora.alpha, targets=tuple(lora.targets),
                   rngs=nnx.Rngs(config.seed + 1))
    return model


def make_model_and_optimizer(config, trainable):
    """``() -> (model, optimizer)`` at random init: for ``create_sharded`` or ``nnx.eval_shape``."""
    from mathvlm.train import optim

    tx = optim.make_optimizer(config.optim, optim.total_updates(config))

    def make():
        model = add_lora(build_model(config.model, config.seed), config)
        return model, nnx.Optimizer(model, tx, wrt=trainable)

    return make


def _architecture(config, mesh):
    """The config's model on ``mesh``: read from ``init.hf`` (a transformers folder; ``config.model``'s
    other keys are loader options) or built by the model registry at random init."""
    folder = config.get("init", {}).get("hf", "")
    if folder:
        from mathvlm import hf

        return hf.from_pretrained(folder, mesh=mesh, rules=config.sharding.rules, **hf_options(config.model))
    return sharding.create_sharded(lambda: build_model(config.model, config.seed), mesh,
                                   config.sharding.rules)


def saved_lora(location: str) -> dict | None:
    """``{"rank", "modules", "alpha"}`` of the LoRA adapters in a run's newest checkpoint (``modules``:
    the model paths of the adapted layers, e.g. ``decoder/layers/attn/q_proj``), or None."""
    state_dir, _ = warm_start.checkpoint_state_dir(location)
    shapes = {p[2:]: s for p, s in warm_start.saved_shapes(state_dir).items() if p.startswith("0/")}
    modules = sorted(p[: -len("/lora_a")] for p in shapes if p.endswith("/lora_a"))
    if not modules:
        return None
    rank = shapes[modules[0] + "/lora_a"][-1]
    return {"rank": int(rank), "modules": modules, "alpha": _run_lora_alpha(location)}


def _run_lora_alpha(location: str) -> float | None:
    """``lora.alpha`` from the ``config.json`` of the run that wrote the checkpoint at ``location``."""
    try:
        return float(mc.load_run_config(location).get("lora", {}).get("alpha", 0.0)) or None
    except mc.ConfigError:
        return None


def _apply_saved_lora(model, saved: dict, location: str, params: str, seed: int):
    """Adapters where the previous stage had them (its module paths moved by ``init.params``)."""
    from mathvlm.models.lora import apply_lora

    if saved["alpha"] is None:
        raise ValueError(f"{location} holds LoRA adapters but its run's config.json (with lora.alpha) "
                         "is not beside its checkpoints; merging needs alpha: copy config.json there")
    modules = []
    for module in saved["modules"]:
        for source, dest in warm_start.param_mapping(params):
            if warm_start.is_under(module, source):
                modules.append((dest + module[len(source):]).strip("/"))
                break
    if not modules:
        return
    targets = tuple(f"^{re.escape(m)}$" for m in modules)
    apply_lora(model, rank=saved["rank"], alpha=saved["alpha"], targets=targets, rngs=nnx.Rngs(seed))


def _place(model, mesh, rules):
    """Place every parameter by its logical axes (new adapters start on one device)."""
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh, rules)))
    return model


def _restored(config, mesh, location: str):
    """The run's model built abstractly (no random init to compute and throw away: at 7B that is most
    of an export's time) and filled from its checkpoint, every parameter placed as it is read."""
    rules = config.sharding.rules

    def make():  # the architecture only: a transformers folder's config.json, not its weights
        folder = config.get("init", {}).get("hf", "")
        if folder:
            from mathvlm import hf

            model = hf.build_from_config(hf.read_config(folder), **hf_options(config.model))
        else:
            model = build_model(config.model, config.seed)
        return add_lora(model, config)

    abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    placements = sharding.state_shardings(state, mesh, rules)
    model = nnx.merge(graphdef, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, placements))
    warm_start.load_from_checkpoint(model, location)
    left = [sharding.path_name(p) for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model))
            if isinstance(x, jax.ShapeDtypeStruct)]
    if left:
        raise ValueError(f"{location}: the checkpoint does not fill {left[:5]} of this model")
    return model


def init_model(config, mesh, *, restore: str | None = None):
    """The model a stage starts from (see the module docstring), placed on ``mesh``.

    ``restore``: a run's workdir or ``checkpoints/<step>`` folder; the model is then the one that run
    trained (its architecture, LoRA adapters included) with every parameter from that checkpoint."""
    from mathvlm.models.lora import merge_lora

    rules = config.sharding.rules
    init_from = config.get("init", {})
    if restore:
        return _restored(config, mesh, restore)

    model = _architecture(config, mesh)
    location = init_from.get("checkpoint", "")
    lora = config.get("lora", None)
    rank = lora.rank if lora else 0
    if location:
        mode = init_from.get("lora", "continue") or "continue"
        if mode not in LORA_MODES:
            raise ValueError(f"init.lora={mode!r}; one of {LORA_MODES}")
        saved = saved_lora(location)
        if saved and mode == "continue" and rank and rank != saved["rank"]:
            raise ValueError(
                f"{location} holds LoRA adapters of rank {saved['rank']} and this stage asks "
                f"lora.rank={rank}: set lora.rank={saved['rank']} to continue them, or init.lora=merge "
                "to fold them into the base weights and start new adapters")
        if saved and mode == "continue" and rank:
            add_lora(model, config)          # the same adapters, loaded below and trained on
            _place(model, mesh, rules)
            warm_start.load_from_checkpoint(model, location, init_from.get("params", ""))
            return model
        if saved:                             # merge: load into the saved layout, fold, then go on
            _apply_saved_lora(model, saved, location, init_from.get("params", ""), config.seed + 1)
            _place(model, mesh, rules)
            warm_start.load_from_checkpoint(model, location, init_from.get("params", ""))
            merge_lora(model)
            logging.warning("merged the rank-%d LoRA adapters of %s into their base kernels",
                            saved["rank"], location)
        else:
            warm_start.load_from_checkpoint(model, location, init_from.get("params", ""))
    add_lora(model, config)
    return _place(model, mesh, rules)
