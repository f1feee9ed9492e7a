"""Generic HF folder I/O: lazy safetensors reading (single file or sharded index), tensor ↔ NNX state
mapping through :class:`WeightSpec` lists, and writing folders ``transformers`` can load."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from mathvlm import sharding

Path = tuple  # state path, e.g. ("layers", 0, "attn", "q_proj", "kernel")


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One HF tensor ↔ one NNX parameter (or one layer slice of a stacked parameter).

    ``to_model`` maps the HF array to the parameter's layout (e.g. transpose ``(out, in)`` linears and
    split heads); ``to_hf`` is its inverse. ``layer`` indexes the leading ``layers`` axis of a
    parameter built with ``scan_layers``."""
    hf_key: str
    path: Path
    to_model: Callable[[np.ndarray], np.ndarray] = _identity
    to_hf: Callable[[np.ndarray], np.ndarray] = _identity
    layer: int | None = None


class HFFormat:
    """How one model family maps to HF files. Subclasses implement the three methods below."""

    # HF keys that are fine to find in a file and skip (regex-free suffix match).
    ignore_suffixes: tuple[str, ...] = ()
    # (old prefix, canonical prefix) pairs: files written by other transformers versions use other
    # key prefixes; they are renamed to the layout :meth:`weights` names (first match wins).
    key_aliases: tuple[tuple[str, str], ...] = ()

    def build(self, hf_config: dict[str, Any], **options) -> nnx.Module:
        raise NotImplementedError

    def weights(self, model) -> list[WeightSpec]:
        raise NotImplementedError

    def hf_config(self, model) -> dict[str, Any]:
        raise NotImplementedError

    def build_options(self, model) -> dict[str, Any]:
        """``build`` options that recreate ``model``'s layout beyond config.json (dtypes, scan)."""
        return {}

    def ignored(self, model, key: str) -> bool:
        return key.endswith(self.ignore_suffixes) if self.ignore_suffixes else False


# ------------------------------------------------------------------------------------------ reading

def read_config(path) -> dict[str, Any]:
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} is not a transformers folder: no config.json")
    with open(file) as f:
        return json.load(f)


class LazyTensors(Mapping):
    """``{hf_key: np.ndarray}`` over the safetensors files of a folder, read one tensor at a time so a
    large checkpoint never sits in host memory twice."""

    def __init__(self, files_by_key: dict[str, str]):
        self._files = files_by_key

    def __getitem__(self, key: str) -> np.ndarray:
        with safe_open(self._files[key], framework="numpy") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def read_safetensors(path) -> LazyTensors:
    """Every tensor of ``model.safetensors`` or of the shards named by ``model.safetensors.index.json``."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return LazyTensors({k: os.path.join(path, v) for k, v in weight_map.items()})
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        bins = [n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {bins}: pickle checkpoints are not read; convert them to safetensors)" if bins else ""
        raise FileNotFoundError(f"no *.safetensors in {path}{hint}")
    files_by_key = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="numpy") as f:
            files_by_key.update(dict.fromkeys(f.keys(), os.path.join(path, name)))
    return LazyTensors(files_by_key)


KeyRename = Mapping[str, str] | Callable[[str], str | None]


class RenamedTensors(Mapping):
    """A view of ``tensors`` under other key names, reading nothing until a tensor is asked for.

    ``rename`` is either a mapping of key *prefixes* ``{old: new}`` (the first matching prefix in
    insertion order is replaced; keys matching none keep their name), or a callable ``key → new key``
    that may return None to drop a key. Two keys renamed to one name are an error."""

    def __init__(self, tensors: Mapping[str, np.ndarray], rename: KeyRename):
        self._tensors = tensors
        self._names: dict[str, str] = {}
        for key in tensors:
            new = _rename(key, rename)
            if new is None:
                continue
            if new in self._names:
                raise ValueError(f"checkpoint keys {self._names[new]!r} and {key!r} are both "
                                 f"renamed to {new!r}")
            self._names[new] = key

    def __getitem__(self, key: str) -> np.ndarray:
        return self._tensors[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _rename(key: str, rename: KeyRename) -> str | None:
    if callable(rename):
        return rename(key)
    for old, new in (rename.items() if isinstance(rename, Mapping) else rename):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _flat_variables(state) -> dict[Path, nnx.Variable]:
    out = {}
    for path, var in jax.tree_util.tree_leaves_with_path(
            state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        out[tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)] = var
    return out


def _fmt(path: Path) -> str:
    return "/".join(str(p) for p in path)


def load_from_tensors(fmt: HFFormat, hf_config: dict, tensors: Mapping[str, np.ndarray], *,
                      mesh=None, rules=None, rename_keys: KeyRename | None = None, **options):
    """Build ``fmt``'s model abstractly, fill every parameter from ``tensors`` and return it.

    Checkpoint keys are first renamed by ``rename_keys`` (see :class:`RenamedTensors`: prefix
    mapping or callable), then by the format's ``key_aliases``, and only then matched against
    :meth:`HFFormat.weights`. Raises ``ValueError`` naming every expected tensor that is missing and
    every (renamed) tensor in the files that the model does not use. With ``mesh``/``rules`` each
    parameter is placed as it is read."""
    if rename_keys is not None:
        tensors = RenamedTensors(tensors, rename_keys)
    if fmt.key_aliases:
        tensors = RenamedTensors(tensors, fmt.key_aliases)
    abstract = nnx.eval_shape(lambda: fmt.build(hf_config, **options))
    graphdef, abstract_state = nnx.split(abstract)
    variables = _flat_variables(abstract_state)
    placements = None
    if mesh is not None:
        placements = _flat_variables(sharding.state_shardings(abstract_state, mesh, rules or "fsdp"))

    specs = fmt.weights(abstract)
    missing = [s.hf_key for s in specs if s.hf_key not in tensors]
    used = {s.hf_key for s in specs}
    unexpected = [k for k in tensors if k not in used and not fmt.ignored(abstract, k)]
    uncovered = sorted(_fmt(p) for p in set(variables) - {s.path for s in specs})
    if missing or unexpected or uncovered:
        raise ValueError(
            f"checkpoint does not match {type(abstract).__name__}: "
            f"missing tensors {sorted(missing)}; unexpected tensors {sorted(unexpected)}"
            + (f"; parameters with no HF tensor {uncovered}" if uncovered else ""))

    arrays: dict[Path, np.ndarray] = {}
    for spec in specs:
        var = variables[spec.path]
        value = np.asarray(spec.to_model(tensors[spec.hf_key])).astype(var.dtype)
        want = var.shape if spec.layer is None else var.shape[1:]
        if value.shape != tuple(want):
            raise ValueError(f"{spec.hf_key}: shape {value.shape} does not fit "
                             f"{_fmt(spec.path)} {tuple(want)}")
        if spec.layer is None:
            arrays[spec.path] = value
        else:
            arrays.setdefault(spec.path, np.zeros(var.shape, var.dtype))[spec.layer] = value

    def place(path, var):
        value = arrays[path]
        target = placements[path].get_value() if placements else None
        return var.replace(jax.device_put(value, target) if target is not None else jnp.asarray(value))

    filled = {p: place(p, v) for p, v in variables.items()}
    state = jax.tree_util.tree_map_with_path(
        lambda path, var: filled[tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)],
        abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------------ writing

def model_to_tensors(fmt: HFFormat, model) -> dict[str, np.ndarray]:
    """``{hf_key: array}`` of a model, in the parameters' dtype."""
    variables = _flat_variables(nnx.state(model))
    specs = fmt.weights(model)
    uncovered = sorted(_fmt(p) for p in set(variables) - {s.path for s in specs})
    if uncovered:
        raise ValueError(f"parameters with no HF name (merge LoRA adapters first?): {uncovered}")
    out = {}
    for spec in specs:
        value = np.asarray(jax.device_get(variables[spec.path].get_value()))
        if spec.layer is not None:
            value = value[spec.layer]
        out[spec.hf_key] = np.asarray(spec.to_hf(value)).copy(order="C")  # keeps 0-d tensors 0-d
    return out


def write_pretrained(fmt: HFFormat, model, path) -> None:
    os.makedirs(path, exist_ok=True)
    tensors = model_to_tensors(fmt, model)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(fmt.hf_config(model), f, indent=2, sort_keys=True)
