"""Rollouts for GRPO: the batches the ``grpo`` step trains on, sampled from the policy being trained.

Each train step, :class:`RolloutStream` takes ``P = data.batch_size / rl.group_size`` problems of the
data engine (``data.task='instruct'``: versions, multiple choice and families as SFT asks them),
asks each ``G = rl.group_size`` times, samples the completions with the KV-cache sampler on the mesh
(``rl.temperature``, ``rl.top_p``, ``rl.top_k``, ``rl.max_new_tokens``, ``rl.stop``; the sampler's
per-token log-probs are kept as ``old_logps``), scores them with the rewards of ``rl.rewards``
(:mod:`mathvlm.eval.rewards`) and returns the update batch:

=================  ==================  ======================================================
key                shape               holds
=================  ==================  ======================================================
``tokens``         [B, S] int32        left-padded prompt (``rl.prompt_len``) + completion
``attention_mask`` [B, S] int32        real prompt and generated tokens (stop token included)
``targets``        [B, S] int32        ``tokens`` shifted left (``targets[t] = tokens[t + 1]``)
``loss_mask``      [B, S] float32      1 on targets that are generated tokens
``old_logps``      [B, S] float32      the sampler's log-prob of each such target
``rewards``        [B] float32         total reward per completion
``images``         [B, H, W, 3]        (VLM) the prompt's picture; ``image_mask`` [B] bool
=================  ==================  ======================================================

with ``S = rl.prompt_len + rl.max_new_tokens`` and the G completions of a prompt contiguous.

Everything is a function of ``(config.seed, step)``: problem ``k`` of the run is
``pool[k mod |pool|]`` (``pool`` = every problem, or with ``rl.curriculum = ((step, max_level),
...)`` those at or below the complexity level in force), and completion row ``r`` of step ``s``
samples with ``fold_in(fold_in(key(seed), s), r)``. A resumed run, or the same run split over
several processes, therefore draws the same batches; the stream's checkpointed state is its step.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mathvlm import sharding
from mathvlm.data import engine_prompts
from mathvlm.eval import rewards as rewards_lib
from mathvlm.models.generate import generate
from mathvlm.train.predict import Predictor, cut_at_stop, is_vlm


@functools.partial(jax.jit, static_argnames=("graphdef", "vlm", "out_sharding", "max_new_tokens", "top_k",
                                             "stop_tokens", "pad_id"))
def _sample(graphdef, state, batch, step_key, temperature, top_p, *, vlm, out_sharding, max_new_tokens,
            top_k, stop_tokens, pad_id):
    model = nnx.merge(graphdef, state)
    rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, batch["row"])
    options = dict(max_new_tokens=max_new_tokens, rng=rng, temperature=temperature, top_p=top_p,
                   top_k=top_k, stop_tokens=stop_tokens, pad_id=pad_id)
    if vlm:
        out = model.generate(batch["tokens"], batch["images"], batch["image_mask"], batch["attention_mask"],
                             **options)
    else:
        out = generate(model, batch["tokens"], batch["attention_mask"], **options)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, out_sharding), out)


def _gather(x: np.ndarray) -> np.ndarray:
    """Every process's rows of ``x``, in process order."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array split over the batch axes, in row order."""
    shards = {(s.index[0].start or 0): s for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


class RolloutStream:
    """Iterator of GRPO update batches (module docstring); ``trainer`` supplies the current policy
    and the mesh. Checkpointed like a grain iterator (``get_state`` / ``set_state``)."""

    def __init__(self, config, trainer, *, workdir: str | None = None):
        from mathvlm.data.engine_rows import EngineVLMSource
        from mathvlm.data.tokenization import load_tokenizer

        rl, data = config.rl, config.data
        self.config, self.trainer = config, trainer
        self.group_size = int(rl.group_size)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        rows = int(data.batch_size)
        if rows % (self.group_size * self.process_count):
            raise ValueError(f"data.batch_size={rows} completions per step must split into groups of "
                             f"rl.group_size={self.group_size} on each of {self.process_count} processes")
        self.prompts_per_step = rows // self.group_size
        self.local_prompts = self.prompts_per_step // self.process_count
        self.prompt_len, self.max_new_tokens = int(rl.prompt_len), int(rl.max_new_tokens)
        self.source = EngineVLMSource(data, seed=config.seed, tokenizer=load_tokenizer(data.get("tokenizer", "bytes")))
        self.predictor = Predictor.from_config(config)
        self.stops = tuple(rl.get("stop", ()) or ())
        self.terms = [dict(t) for t in rl.rewards]
        # Accuracy and format rate are logged whatever the reward is made of; reasoning is asked
        # for unless the answers taught were the answer line or letter alone.
        fmt = next((t for t in self.terms if t["name"] == "format"),
                   {"name": "format", "require_reasoning": data.get("answer", "cot") == "cot"})
        self.checks = [{"name": "correct"}, {**fmt, "weight": 1.0}]
        self.curriculum = tuple((int(s), int(level)) for s, level in (rl.get("curriculum", ()) or ()))
        self.sample_options = {"temperature": float(rl.temperature), "top_p": float(rl.get("top_p", 1.0)),
                               "top_k": int(rl.get("top_k", 0))}
        self.log_rollouts = int(rl.get("log_rollouts", 8))
        self.path = (os.path.join(workdir, "rollouts.jsonl")
                     if workdir and self.process_index == 0 and self.log_rollouts else None)
        self.step, self.last_metrics, self._pools = 0, {}, {}

    # -- checkpointed state (grain's CheckpointHandler calls these on non-grain iterators) --
    def get_state(self) -> bytes:
        return json.dumps({"step": self.step}).encode()

    def set_state(self, state: bytes) -> None:
        self.step = int(json.loads(state.decode())["step"])

    def start_prefetch(self) -> None:
        pass

    def __iter__(self):
        return self

    def max_level(self, step: int) -> int | None:
        """The complexity level in force at ``step`` under ``rl.curriculum`` (None: every level)."""
        level = None
        for start, max_level in self.curriculum:
            if step >= start:
                level = max_level
        return level

    def problems(self, step: int) -> list[int]:
        """Engine indices of the step's prompts, every process's in process order."""
        level = self.max_level(step)
        if level not in self._pools:
            size = len(self.source)
            self._pools[level] = (np.arange(size) if level is None
                                  else np.flatnonzero(self.source.levels <= level))
            if not len(self._pools[level]):
                raise ValueError(f"rl.curriculum: no problem at complexity ≤ {level} in data.families")
        pool, first = self._pools[level], step * self.prompts_per_step
        return [int(pool[k % len(pool)]) for k in range(first, first + self.prompts_per_step)]

    def _prompt_rows(self, records: list[dict], model) -> dict:
        vlm = is_vlm(model)
        tokens_per_image, size = self.predictor.vision_settings(model) if vlm else (0, 0)
        n = len(records)
        tokens = np.full((n, self.prompt_len), self.predictor.tokenizer.pad_id, np.int32)
        mask = np.zeros((n, self.prompt_len), np.int32)
        pixels = np.zeros((n, size, size, 3), np.float32) if vlm else None
        image_mask = np.zeros((n,), bool)
        for row, record in enumerate(records):
            image = engine_prompts.engine_image(record, record["multiple_choice"])
            if image is not None and not vlm:
                raise ValueError(f"record {record.get('id')}: version {record.get('version')} shows a picture but "
                                 "the model takes none; use data.version='text_only' for a text model")
            ids = self.predictor.encode(engine_prompts.engine_prompt(record, record["multiple_choice"]),
                                        image is not None, tokens_per_image)
            if len(ids) > self.prompt_len:
                raise ValueError(f"record {record.get('id')}: its prompt is {len(ids)} tokens, longer than "
                                 f"rl.prompt_len={self.prompt_len}; raise rl.prompt_len")
            tokens[row, self.prompt_len - len(ids):], mask[row, self.prompt_len - len(ids):] = ids, 1
            if image is not None:
                from mathvlm.data import images as image_ops

                pixels[row] = image_ops.preprocess(np.asarray(image), self.predictor.image_preprocess, size)
                image_mask[row] = True
        batch = {"tokens": tokens, "attention_mask": mask}
        if vlm:
            batch |= {"images": pixels, "image_mask": image_mask}
        return batch

    def sample(self, model, prompts: dict, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, lengths, logprobs) of this process's completion rows, sampled on the mesh."""
        from mathvlm.train.loop import global_batch

        trainer, rows = self.trainer, len(prompts["tokens"])
        first_row = self.process_index * rows
        local = {**prompts, "row": np.arange(first_row, first_row + rows, dtype=np.uint32)}
        batch = global_batch(local, trainer.mesh, trainer.rules)
        graphdef, state = nnx.split(model)
        pad = self.predictor.tokenizer.pad_id
        key = jax.random.fold_in(jax.random.key(int(self.config.seed)), step)
        with jax.set_mesh(trainer.mesh), sharding.use_rules(trainer.rules):
            out = _sample(graphdef, state, batch, key, jnp.float32(self.sample_options["temperature"]),
                          jnp.float32(self.sample_options["top_p"]), vlm=is_vlm(model),
                          out_sharding=sharding.batch_sharding(trainer.mesh, trainer.rules, 1).spec,
                          max_new_tokens=self.max_new_tokens, top_k=self.sample_options["top_k"],
                          stop_tokens=self.predictor.stop_token_ids(self.stops), pad_id=pad)
        return local_rows(out.tokens), local_rows(out.lengths), local_rows(out.logprobs)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
        eos = self.predictor.tokenizer.eos_id
        return [cut_at_stop(self.predictor.tokenizer.decode([t for t in row[:n] if t != eos]), self.stops)
                for row, n in zip(tokens, lengths)]

    def __next__(self) -> dict:
        step, model, G = self.step, self.trainer.model, self.group_size
        # Every process scores every row (cheap next to sampling), so metrics and rollouts.jsonl
        # describe the global batch and each process keeps its own rows' rewards.
        asked = [self.source.problem(i) for i in self.problems(step)]  # rendered once per prompt
        records = [record for record in asked for _ in range(G)]
        rows = self.local_prompts * G
        mine = slice(self.process_index * rows, (self.process_index + 1) * rows)
        local = slice(self.process_index * self.local_prompts, (self.process_index + 1) * self.local_prompts)
        prompts = {k: np.repeat(v, G, axis=0) for k, v in self._prompt_rows(asked[local], model).items()}
        tokens, lengths, logprobs = self.sample(model, prompts, step)
        all_tokens, all_lengths = _gather(tokens), _gather(lengths)
        completions = self.decode(all_tokens, all_lengths)
        total, terms, reasons = rewards_lib.score_completions(completions, records, self.terms)
        _, checks, _ = rewards_lib.score_completions(completions, records, self.checks)

        P, T = self.prompt_len, self.max_new_tokens
        generated = np.arange(T)[None, :] < lengths[:, None]
        full = np.concatenate([prompts["tokens"], tokens], axis=1)
        batch = {"tokens": full,
                 "attention_mask": np.concatenate([prompts["attention_mask"], generated.astype(np.int32)], axis=1),
                 "targets": np.concatenate([full[:, 1:], np.full((len(full), 1), self.predictor.tokenizer.pad_id,
                                                                 np.int32)], axis=1),
                 "loss_mask": np.concatenate([np.zeros((len(full), P - 1), np.float32),
                                              generated.astype(np.float32), np.zeros((len(full), 1), np.float32)],
                                             axis=1),
                 "old_logps": np.concatenate([np.zeros((len(full), P - 1), np.float32),
                                              np.where(generated, logprobs, 0.0).astype(np.float32),
                                              np.zeros((len(full), 1), np.float32)], axis=1),
                 "rewards": np.asarray(total, np.float32)[mine]}
        if "images" in prompts:
            batch |= {"images": prompts["images"], "image_mask": prompts["image_mask"]}

        grouped = np.asarray(total, np.float64).reshape(-1, G)
        self.last_metrics = {
            "rollout/reward_mean": float(np.mean(total)), "rollout/reward_std": float(np.std(total)),
            "rollout/group_reward_std": float(np.mean(grouped.std(axis=1))),
            "rollout/accuracy": float(np.mean(checks["correct"])),
            "rollout/format_rate": float(np.mean(checks["format"])),
            "rollout/completion_tokens": float(np.mean(all_lengths)),
            "rollout/truncated": float(np.mean(all_lengths >= T)),
            **{f"rollout/{name}": float(np.mean(values)) for name, values in terms.items()},
            **{f"rollout/reasons/{reason}": count / len(total) for reason, count in sorted(reasons.items())}}
        # Per version: where the groups carry no signal (all right, or all wrong) and why.
        versions = np.asarray([r.get("version", "") for r in asked])
        correct = np.asarray(checks["correct"], np.float64).reshape(-1, G)
        for version in sorted(set(versions)):
            rows = versions == version
            self.last_metrics[f"rollout/version/{version}/accuracy"] = float(correct[rows].mean())
            self.last_metrics[f"rollout/version/{version}/zero_advantage"] = float(
                np.mean(np.ptp(grouped[rows], axis=1) == 0))
        if self.max_level(step) is not None:
            self.last_metrics["rollout/max_level"] = float(self.max_level(step))
        self._log(step, records, completions, total, checks)
        self.step += 1
        return batch

    def _log(self, step, records, completions, total, checks) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for i in range(min(self.log_rollouts, len(completions))):
                r = records[i]
                f.write(json.dumps({
                    "step": step, "row": i, "id": r.get("id"), "version": r.get("version"),
                    "complexity": int(r.get("complexity", -1)),
                    "prompt": engine_prompts.engine_prompt(r, r["multiple_choice"]),
                    "answer": r["answer_mc"] if r["multiple_choice"] else r["answer"],
                    "completion": completions[i], "reward": float(total[i]),
                    "correct": float(checks["correct"][i]), "format": float(checks["format"][i])}) + "\n")

