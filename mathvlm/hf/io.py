"""Generic HF folder I/O: lazy safetensors reading (single file or sharded index), tensor ↔ NNX state
mapping through :class:`WeightSpec` lists, and writing folders ``transformers`` can load."""

from __future__ import annotations

import dataclasses
import json
import os
import re
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

    def file(self, key: str) -> str:
        return self._files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def info(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of a tensor from the file header, without reading its data."""
        with safe_open(self._files[key], framework="numpy") as f:
            tensor = f.get_slice(key)
            shape, name = tuple(tensor.get_shape()), tensor.get_dtype()
        return shape, np.dtype(jnp.dtype(_SAFETENSORS_DTYPES.get(name, name.lower())))


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool"}


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

    def info(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` without reading the tensor when the underlying mapping can tell."""
        if hasattr(self._tensors, "info"):
            return self._tensors.info(self._names[key])
        value = np.asarray(self[key])
        return value.shape, value.dtype


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

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str | None) -> int | None:
    """``"5GB"`` → 5·10⁹ bytes (``KB``/``MB``/``GB`` are powers of 10 as in transformers, ``KiB``/``MiB``
    /``GiB`` powers of 2; a bare number is bytes). None, ``""`` or 0: no limit."""
    if size is None or size == "" or size == 0:
        return None
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"shard size {size!r}: use e.g. 5GB, 500MB, 2GiB or a number of bytes")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"shard size {size!r} must be positive")
    return value


def float_dtype(dtype) -> np.dtype | None:
    """A numpy dtype (bfloat16 through ml_dtypes) for a dtype name, or None."""
    return None if dtype in (None, "") else np.dtype(jnp.dtype(dtype))


def cast_floating(array, dtype: np.dtype | None):
    """``array`` in ``dtype`` when it is floating point (integer tensors keep their type)."""
    if dtype is None or not jnp.issubdtype(array.dtype, jnp.floating) or array.dtype == dtype:
        return array
    return array.astype(dtype)


class ShardWriter:
    """Writes tensors, in the order given, into ``model.safetensors`` or — when they exceed
    ``max_shard_size`` bytes — ``model-0000i-of-0000N.safetensors`` shards plus
    ``model.safetensors.index.json`` (the layout transformers reads). At most one shard's tensors are
    held in memory; a tensor larger than the limit gets a shard of its own.

        with ShardWriter(folder, "5GB") as writer:
            for key, array in tensors:
                writer.add(key, array)
        writer.summary   # {"files", "shards", "bytes", "dtypes"}

    Weight files of an earlier write in ``path`` are removed first (a stale shard or index would be
    read with the new ones)."""

    def __init__(self, path, max_shard_size: int | str | None = None):
        self.path = os.fspath(path)
        self.max_bytes = parse_size(max_shard_size)
        os.makedirs(self.path, exist_ok=True)
        for name in os.listdir(self.path):
            if name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_NAME.match(name) or name.startswith(".shard-"):
                os.remove(os.path.join(self.path, name))
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []     # (temporary file, keys)
        self._keys: set[str] = set()
        self.total_bytes = 0
        self.dtypes: dict[str, int] = {}
        self.summary: dict[str, Any] | None = None

    def add(self, key: str, array) -> None:
        if key in self._keys:
            raise ValueError(f"tensor {key!r} written twice")
        array = np.asarray(array)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")             # (np.ascontiguousarray makes 0-d tensors 1-d)
        if self._pending and self.max_bytes and self._pending_bytes + array.nbytes > self.max_bytes:
            self._flush()
        self._keys.add(key)
        self._pending[key] = array
        self._pending_bytes += array.nbytes
        self.total_bytes += array.nbytes
        self.dtypes[array.dtype.name] = self.dtypes.get(array.dtype.name, 0) + 1

    def _flush(self) -> None:
        name = os.path.join(self.path, f".shard-{len(self._shards) + 1:05d}.safetensors.tmp")
        save_file(self._pending, name, metadata={"format": "pt"})
        self._shards.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> dict[str, Any]:
        if self.summary is not None:
            return self.summary
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            files = [WEIGHTS_NAME]
            os.replace(self._shards[0][0], os.path.join(self.path, WEIGHTS_NAME))
        else:
            files, weight_map = [], {}
            for i, (tmp, keys) in enumerate(self._shards, 1):
                name = f"model-{i:05d}-of-{count:05d}.safetensors"
                os.replace(tmp, os.path.join(self.path, name))
                files.append(name)
                weight_map.update(dict.fromkeys(keys, name))
            with open(os.path.join(self.path, INDEX_NAME), "w") as f:
                json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                          f, indent=2, sort_keys=True)
            files.append(INDEX_NAME)
        self.summary = {"files": files, "shards": count, "bytes": self.total_bytes,
                        "dtypes": dict(sorted(self.dtypes.items()))}
        return self.summary

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:   # leave no half-written temporaries behind
            for tmp, _ in self._shards:
                if os.path.exists(tmp):
                    os.remove(tmp)


def _check_covered(fmt: HFFormat, model, variables) -> list[WeightSpec]:
    specs = fmt.weights(model)
    uncovered = sorted(_fmt(p) for p in set(variables) - {s.path for s in specs})
    if uncovered:
        raise ValueError(f"parameters with no HF name (merge LoRA adapters first?): {uncovered}")
    return specs


def _fetch(var: nnx.Variable, spec: WeightSpec, dtype: np.dtype | None) -> np.ndarray:
    """One HF tensor from the device: only this parameter (one layer of a stacked one), cast there."""
    value = var.get_value()
    if spec.layer is not None:
        value = value[spec.layer]
    value = np.asarray(jax.device_get(cast_floating(value, dtype)))
    return np.asarray(spec.to_hf(value)).copy(order="C")  # keeps 0-d tensors 0-d


def set_config_dtype(hf_config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``dtype`` / ``torch_dtype`` of a config.json dict and of its sub-configs (``text_config`` ...)."""
    hf_config["dtype"] = dtype
    if "torch_dtype" in hf_config:
        hf_config["torch_dtype"] = dtype
    for value in hf_config.values():
        if isinstance(value, dict) and "model_type" in value:
            set_config_dtype(value, dtype)
    return hf_config


def write_pretrained(fmt: HFFormat, model, path, *, dtype=None,
                     max_shard_size: int | str | None = None) -> dict[str, Any]:
    """Write ``config.json`` and the weights (sharded above ``max_shard_size``), fetching one parameter
    at a time from the devices (cast to ``dtype`` there when given). Returns a summary: files, shard
    count, bytes, dtype."""
    variables = _flat_variables(nnx.state(model))
    specs = _check_covered(fmt, model, variables)
    hf_config = fmt.hf_config(model)                    # refuses unwritable models before any file
    target = float_dtype(dtype)
    with ShardWriter(path, max_shard_size) as writer:
        for spec in specs:
            writer.add(spec.hf_key, _fetch(variables[spec.path], spec, target))
    summary = writer.close()
    written = (target.name if target is not None else
               next(iter(summary["dtypes"])) if len(summary["dtypes"]) == 1 else None)
    if written:
        set_config_dtype(hf_config, written)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    return {**summary, "files": sorted(summary["files"] + ["config.json"]),
            "dtype": written or "mixed"}
