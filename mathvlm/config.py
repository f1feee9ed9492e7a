"""Experiment configs: arg strings, shared defaults, loading, and override checks.

Every experiment is a file ``configs/<name>.py`` with ``get_config(arg)`` returning a locked
``ml_collections.ConfigDict``. On the command line it is named ``configs/x.py:size=tiny,stage=align`` and
overridden with ``--config.optim.lr=1e-4`` (``ml_collections.config_flags``). A recipe starts from
:func:`defaults` and changes only what differs, so it stays short::

    def get_config(arg=None):
        arg = mc.parse_arg(arg, size="tiny")
        config = mc.defaults()
        config.optim.lr = 2e-5
        return mc.finalize(config)

:func:`preflight` checks the command line before any work: an unknown config key or a value of the
wrong type stops the run with a message naming the key and the valid keys.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Any, Sequence

from ml_collections import ConfigDict


class ConfigError(ValueError):
    """A config, arg string or override that cannot be used; the message says what to change."""


# ------------------------------------------------------------------------------------------ arg strings

def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parse ``"size=tiny,steps=10"`` into a ConfigDict, typed by ``defaults``.

    Every key must be one of ``defaults``; values are converted to the default's type (bool accepts
    true/false/1/0). ``None`` or ``""`` gives the defaults.
    """
    out = ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"config arg {item!r} in {arg!r} is not key=value; valid keys: "
                              f"{', '.join(sorted(defaults))}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ConfigError(f"unknown config arg {key!r} in {arg!r}; valid keys: "
                              f"{', '.join(sorted(defaults))}")
        out[key] = _convert(text, defaults[key], f"config arg {key!r}")
    return out


def _convert(text: str, like: Any, what: str) -> Any:
    """Convert a command-line string to the type of ``like``; raise ConfigError naming ``what``."""
    if isinstance(like, list):
        raise ConfigError(f"{what} is a list, which command-line overrides cannot set "
                          "(ml_collections); make it a tuple in the config")
    try:
        if isinstance(like, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if like is None or isinstance(like, tuple):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
            return tuple(value) if isinstance(like, tuple) and isinstance(value, list) else value
        return type(like)(text)
    except ValueError:
        raise ConfigError(f"{what} expects {type(like).__name__} (default {like!r}), got {text!r}") from None


# ------------------------------------------------------------------------------------- shared defaults

def defaults() -> ConfigDict:
    """Keys every recipe has; recipes change values and fill ``model`` / ``data`` / ``loss``."""
    c = ConfigDict()
    c.name = "run"                       # shown in summaries and logs
    c.seed = 0
    c.job = "train"                      # registry kind "job": what main runs
    c.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})   # -1 = fill with remaining devices
    c.sharding = ConfigDict({"rules": "fsdp"})                  # preset in mathvlm.sharding.RULES

    c.model = ConfigDict({"name": ""})   # registry "model" name + its keyword arguments
    # Starting weights: a transformers folder, and/or a previous stage's run; lora: what happens to
    # that run's LoRA adapters, "continue" or "merge" (see mathvlm.train.build).
    c.init = ConfigDict({"hf": "", "checkpoint": "", "params": "", "lora": "continue"})
    # LoRA adapters (rank 0 = none), added after the starting weights load; ``targets`` are regular
    # expressions on Dense paths (mathvlm.models.lora.apply_lora).
    c.lora = ConfigDict({"rank": 0, "alpha": 16.0, "targets": ("q_proj", "v_proj")})
    c.data = ConfigDict({"source": "", "batch_size": 8, "seq_len": 128, "max_bad_fraction": 0.1})
    # Sequences are tuples: ml_collections' command-line overrides accept tuples, not lists.
    c.loss = ConfigDict({"terms": ({"name": "next_token", "weight": 1.0},)})

    c.train = ConfigDict({
        "step": "next_token",            # registry kind "step"
        "steps": 100,
        "log_every": 10,
        "trainable": "all",              # parameter filter (module-path patterns)
        "max_nonfinite": 5,              # consecutive non-finite steps (skipped) before stopping
        # positions per chunk of the token steps' logits: 0 materialises [batch, length, vocab]
        # float32 logits; > 0 computes them a chunk at a time inside the loss (never all at once)
        "logits_chunk": 0,
        "peak_tflops": 0.0,              # the devices' summed peak, for the logged MFU (0: not logged)
        # batches measuring a VLM's image-feature statistics at a fresh start (model.feature_norm)
        "calibrate_image_features": 0,
        # bytes of memory per device for the pre-run fit check (0: what the device reports; CPUs
        # report nothing, so no check)
        "device_memory_bytes": 0,
    })
    c.optim = ConfigDict({
        "lr": 1e-3, "end_lr_fraction": 0.0, "warmup_steps": 10, "schedule": "cosine",
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_norm": 1.0,
        "accum_steps": 1,
    })
    # min_free_bytes: extra free space the workdir must have beyond the checkpoints themselves.
    c.checkpoint = ConfigDict({"every_steps": 0, "keep": 2, "min_free_bytes": 0})
    # at_start: also evaluate before the first step (the untrained baseline, logged at step 0).
    c.eval = ConfigDict({"every_steps": 0, "evaluators": (), "max_new_tokens": 32, "at_start": False})
    return c


def finalize(config: ConfigDict) -> ConfigDict:
    """Lock the config so that a typo'd key anywhere fails instead of being silently added."""
    config.lock()
    return config


# --------------------------------------------------------------------------------------------- loading

def load(spec: str) -> ConfigDict:
    """Load ``path/to/config.py[:arg]`` the way ``config_flags`` does: ``get_config(arg)`` or
    ``get_config()`` when no arg is given."""
    path, arg = split_spec(spec)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (from --config={spec})")
    module_spec = importlib.util.spec_from_file_location(f"_mathvlm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config


def write_config(config: ConfigDict, workdir: str) -> str:
    """Write the resolved config as ``DIR/config.json`` (process 0 only)."""
    import json

    import jax  # deferred: this module stays importable without JAX

    from mathvlm.workdir import is_remote, remote_url  # deferred: mathvlm.workdir imports this module

    if is_remote(workdir):  # gs://: one object, written through etils.epath
        from etils import epath

        path = f"{remote_url(workdir)}/config.json"
        if jax.process_index() == 0:
            epath.Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
        return path
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)
    return path


def load_run_config(location: str) -> ConfigDict:
    """The config a run was trained with, from its ``config.json``: ``location`` is the run's workdir,
    its ``checkpoints`` folder or one ``checkpoints/<step>`` folder. JSON lists come back as tuples
    (the type configs use for sequences)."""
    import json

    from mathvlm.workdir import is_remote, url_scheme  # deferred: mathvlm.workdir imports this module

    if is_remote(location):
        raise ConfigError(f"{location}: reading a run from {url_scheme(location)}:// is not supported here "
                          "(its checkpoints are read with local file calls); copy the run to a local "
                          "directory first (gcloud storage cp -r URL DIR) or read it through a gcsfuse mount")
    location = os.path.abspath(location)
    candidates = [location, os.path.dirname(location), os.path.dirname(os.path.dirname(location))]
    for folder in candidates:
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path) and os.path.isdir(os.path.join(folder, "checkpoints")):
            with open(path) as f:
                return ConfigDict(_tuples(json.load(f)))
    raise ConfigError(f"{location}: no run config.json found (looked in {candidates[:3]}); give the run's "
                      "workdir, or pass its training config explicitly")


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/x.py:size=tiny"`` → ``("configs/x.py", "size=tiny")``."""
    path, sep, arg = spec.partition(".py:")
    if sep:
        return path + ".py", arg
    return spec, None


def set_value(config: ConfigDict, key: str, value: Any) -> None:
    """Set dotted ``key`` of an existing config to a Python ``value`` (strings are parsed like the command
    line's, see :func:`override`); an unknown key or a wrongly typed value raises ConfigError."""
    if isinstance(value, str):
        return override(config, key, value)
    node, leaf = _parent_of(config, key)
    _assign(node, leaf, tuple(value) if isinstance(value, list) else value, key)


def override(config: ConfigDict, key: str, text: str) -> None:
    """Set dotted ``key`` from its command-line ``text``, type-checked against the current value."""
    node, leaf = _parent_of(config, key)
    current = node[leaf]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"--config.{key} names a group, not a value; set one of its keys: "
                          f"{', '.join(sorted(current.keys()))}")
    _assign(node, leaf, _convert(text, current, f"config key {key!r}"), key)


def _parent_of(config: ConfigDict, key: str) -> tuple[ConfigDict, str]:
    """The group holding dotted ``key`` and the key's last part; every part must already exist."""
    *parents, leaf = key.split(".")
    node = config
    for depth, name in enumerate(parents):
        _require_key(node, name, ".".join(parents[:depth]), key)
        node = node[name]
    _require_key(node, leaf, ".".join(parents), key)
    return node, leaf


def _assign(node: ConfigDict, leaf: str, value: Any, key: str) -> None:
    try:
        node[leaf] = value
    except TypeError as e:  # ml_collections' own type safety
        raise ConfigError(f"config key {key!r}: {e}") from None


def _require_key(node, name: str, where: str, full_key: str) -> None:
    if not isinstance(node, ConfigDict) or name not in node:
        valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "(not a group)"
        raise ConfigError(f"unknown config key {full_key!r}: {name!r} is not a key of "
                          f"{'the config' if not where else repr(where)}; valid keys there: {valid}")


def preflight(argv: Sequence[str]) -> ConfigDict | None:
    """Check ``--config`` and every ``--config.key=value`` of a command line before absl parses it.

    Returns the config with overrides applied (or None when there is no ``--config``), raising
    ConfigError with a precise message on the first bad key, type or arg.
    """
    spec, overrides = None, []
    args = list(argv[1:])
    for i, a in enumerate(args):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(args):
            spec = args[i + 1]
        elif a.startswith("--config."):
            key, eq, text = a[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{a} has no value")
                text = args[i + 1]
            overrides.append((key, text))
    if spec is None:
        if overrides:
            raise ConfigError("--config.* overrides given without --config=configs/<name>.py")
        return None
    config = load(spec)
    for key, text in overrides:
        override(config, key, text)
    return config


def main_guard(argv: Sequence[str]) -> None:
    """Run :func:`preflight` (and :func:`mathvlm.workdir.check_paths` on ``--workdir``) and exit with a
    one-line message (code 2) on a config error."""
    from mathvlm.workdir import check_paths  # deferred: mathvlm.workdir imports this module

    try:
        config = preflight(argv)
        if config is not None:
            check_paths(config, _flag(argv, "workdir"))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _flag(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` / ``--name value`` in ``argv`` (the last one given), or None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value
