"""Random-access sources of training rows built from records (see :mod:`mathvlm.data.readers`).

Rows follow the batch contract of :mod:`mathvlm.data`; pair rows (Math-PUMA) prefix each member's keys
with ``strong_`` / ``weak_`` and preference rows (DPO) with ``chosen_`` / ``rejected_``. When the config
sets an image size, rows also have:
``images`` [H, W, 3] float32 and ``image_mask`` () bool (False for text-only rows, whose image is zeros).
Every row also carries ``skip_reason`` () int32: 0 for a usable row; otherwise the index in
:data:`SKIP_REASONS` of why the row was blanked (unreadable image, missing file, too long). A blanked row
keeps the batch shape but has no supervised tokens, so it contributes nothing; the trainer counts the
reasons and stops when their fraction exceeds ``data.max_bad_fraction``.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from mathvlm import registry
from mathvlm.data import images as image_ops
from mathvlm.data import readers, templates
from mathvlm.data.tokenization import pack_tokens

SKIP_REASONS = ("ok", "missing_image", "corrupt_image", "too_long")


FORMATS = ("llava_json", "puma_rows", "puma_pairs", "mavis_rows", "preference_rows")


def read_records(data_config) -> list[dict]:
    """Records of ``data_config.path`` in ``data_config.format`` (one of :data:`FORMATS`)."""
    fmt, path = data_config.format, data_config.path
    common = {"image_root": data_config.get("image_root", None),
              "max_bad_fraction": data_config.get("max_bad_fraction", 0.1)}
    if fmt == "llava_json":
        return readers.read_llava_json(path, **common)
    if fmt in ("puma_rows", "puma_pairs"):
        return readers.read_puma_rows(path, pairs=fmt == "puma_pairs", **common)
    if fmt == "mavis_rows":
        return readers.read_mavis_rows(path, version=data_config.get("version", "text_lite"), **common)
    if fmt == "preference_rows":
        return readers.read_preference_rows(path, **common)
    raise ValueError(f"data.format={fmt!r}; formats: {', '.join(FORMATS)}")


class RowBuilder:
    """Turns one record into one row: template → tokens + loss mask, image → pixels."""

    def __init__(self, data_config, tokenizer, default_template: str = "vicuna_v1"):
        self.tokenizer = tokenizer
        self.template = data_config.get("template", default_template)
        self.seq_len = data_config.seq_len
        self.image_size = data_config.get("image_size", 0)
        self.image_kind = data_config.get("image_preprocess", "clip")
        self.num_image_tokens = data_config.get("num_image_tokens", 0)

    def blank(self, reason: str) -> dict:
        row = pack_tokens(np.zeros(0, np.int32), np.zeros(0, bool), seq_len=self.seq_len,
                          pad_id=self.tokenizer.pad_id)
        return self._with_image(row, None) | {"skip_reason": np.int32(SKIP_REASONS.index(reason))}

    def _with_image(self, row: dict, pixels) -> dict:
        if not self.image_size:
            return row
        if pixels is None:
            pixels = np.zeros((self.image_size, self.image_size, 3), np.float32)
            return row | {"images": pixels, "image_mask": np.bool_(False)}
        return row | {"images": pixels, "image_mask": np.bool_(True)}

    def __call__(self, record: dict) -> dict:
        pixels = None
        if record["images"]:
            if not self.image_size:
                raise ValueError(f"record {record['id']} has an image but data.image_size is not set")
            try:
                pixels = image_ops.preprocess(record["images"][0], self.image_kind, self.image_size)
            except FileNotFoundError:
                logging.warning("record %s: image %s not found", record["id"], record["images"][0])
                return self.blank("missing_image")
            except ValueError as e:
                logging.warning("record %s: %s", record["id"], e)
                return self.blank("corrupt_image")
        pieces = templates.render(record["conversation"], self.template)
        ids, mask, _ = templates.tokenize_pieces(pieces, self.tokenizer, self.num_image_tokens)
        if self.tokenizer.bos_id is not None:
            ids, mask = np.concatenate([[self.tokenizer.bos_id], ids]), np.concatenate([[False], mask])
        if len(ids) > self.seq_len + 1:
            # Counted per batch (skip_reason); the log names every 20th so long-tailed data stays readable.
            logging.log_every_n(logging.WARNING, "record %s: %d tokens exceed seq_len %d (1 in 20 such "
                                "records logged)", 20, record["id"], len(ids), self.seq_len)
            return self.blank("too_long")
        row = pack_tokens(ids, mask, seq_len=self.seq_len, pad_id=self.tokenizer.pad_id)
        return self._with_image(row, pixels) | {"skip_reason": np.int32(0)}


def join_members(members: dict[str, dict]) -> dict:
    """One row from named member rows (``{"strong": row, "weak": row}``): keys prefixed by member name.
    If any member was blanked the whole row is, so a pair never trains on one side alone."""
    reason = max(int(row["skip_reason"]) for row in members.values())
    out = {f"{name}_{key}": value for name, row in members.items() for key, value in row.items()
           if key != "skip_reason"}
    if reason:
        for name in members:
            out[f"{name}_loss_mask"] = np.zeros_like(out[f"{name}_loss_mask"])
    return out | {"skip_reason": np.int32(reason)}


@registry.register("source", "conversations")
class ConversationSource:
    """Rows of a local file in one of the papers' formats (``data.format``, ``data.path``): plain rows,
    Math-PUMA pair rows (``puma_pairs``) or DPO preference rows (``preference_rows``)."""

    def __init__(self, data_config, *, seed: int, tokenizer):
        del seed  # order comes from the pipeline's shuffle
        self.records = read_records(data_config)
        if not self.records:
            raise ValueError(f"{data_config.path}: no usable records")
        self.build = RowBuilder(data_config, tokenizer)
        self.members = {"puma_pairs": ("strong", "weak"),
                        "preference_rows": ("chosen", "rejected")}.get(data_config.format)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[int(index)]
        if self.members is None:
            return self.build(record)
        return join_members({name: self.build(record[name]) for name in self.members})


@registry.register("source", "engine_captions")
class EngineCaptionSource:
    """Diagram–caption rows for contrastive training (MAVIS CLIP-Math) from the data engine:
    ``images`` [S, S, 3] float32 and the caption as ``tokens`` / ``attention_mask`` [seq_len]
    (``[bos] caption [eos]``, cut to ``seq_len`` as CLIP cuts to 77 — the count is ``truncated``)."""

    def __init__(self, data_config, *, seed: int, tokenizer):
        from mathvlm.engine.core import EngineSource

        engine_config = data_config.to_dict() | {"kind": "caption"}
        self.engine = EngineSource(type(data_config)(engine_config), seed=seed)
        self.tokenizer, self.seq_len = tokenizer, data_config.seq_len
        self.image_size = data_config.get("image_size", 224)
        self.image_kind = data_config.get("image_preprocess", "clip")

    def __len__(self) -> int:
        return len(self.engine)

    def __getitem__(self, index: int) -> dict:
        record = self.engine[int(index)]
        tok = self.tokenizer
        body = tok.encode(record["caption"])
        bos = [tok.bos_id] if tok.bos_id is not None else []
        room = self.seq_len - len(bos) - 1
        ids = np.full(self.seq_len, tok.pad_id, np.int32)
        kept = bos + body[:room] + [tok.eos_id]
        ids[: len(kept)] = kept
        return {"images": image_ops.preprocess(record["image"], self.image_kind, self.image_size),
                "tokens": ids, "attention_mask": (np.arange(self.seq_len) < len(kept)).astype(np.int32),
                "truncated": np.int32(len(body) > room), "skip_reason": np.int32(0)}
