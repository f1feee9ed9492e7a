"""``python -m mathvlm.bench decode``: greedy KV-cache generation (:mod:`mathvlm.models.generate`)
against transformers' ``generate`` on the same weights, batch 1 and 8, 256 new tokens.

The DecoderLM is written with :func:`mathvlm.hf.save_pretrained` and read by
``LlamaForCausalLM.from_pretrained``, both in the same dtype (bf16 by default). Both sides generate
exactly ``--new`` tokens (no stop token). Calls alternate (JAX, torch, JAX, ...) so load on a shared
machine hits both alike. The JAX side is one compiled program per shape (prefill + ``lax.while_loop``);
the table also shows how long the call takes to return before the result is ready (host work per
call) and whether any timed call recompiled.

The last columns are the machine's ceiling for this model: each step must read every weight once and
the keys and values cached so far (:func:`min_bytes_per_step`) and do ``2·params`` FLOPs per token plus
attention (:func:`flops_per_step`). At the read bandwidth (:func:`mathvlm.bench.common.read_bandwidth`,
all cores) and the bf16 matmul peak (:func:`mathvlm.bench.common.matmul_peak`) measured in the same run,
no implementation exceeds ``batch / max(bytes / bandwidth, flops / peak)`` tokens/s; "GB/s" is the
rate the mathvlm step reads those bytes at.
"""

from __future__ import annotations

import tempfile

import numpy as np

from mathvlm.bench import common
from mathvlm.bench.train import LLAMA_134M, QUICK


def add_arguments(parser) -> None:
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--new", type=int, default=256, help="new tokens per row")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per side and batch size")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="parameter and compute dtype of both sides")
    parser.add_argument("--no-torch", action="store_true", help="skip the transformers side")


def _prompts(vocab: int, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch)
    return (rng.integers(3, vocab, (batch, length)).astype(np.int32),
            np.ones((batch, length), np.int32))


def min_bytes_per_step(fields: dict, itemsize: int, params: int, batch: int, prompt: int,
                       new: int) -> float:
    """Bytes a decode step cannot avoid reading, averaged over the ``new`` steps: every parameter once
    plus the keys and values of the tokens so far (``prompt + new/2`` on average)."""
    kv_per_token = 2 * fields["num_layers"] * fields["num_kv_heads"] * fields["head_dim"] * itemsize
    return params * itemsize + batch * kv_per_token * (prompt + new / 2)


def flops_per_step(fields: dict, params: int, batch: int, prompt: int, new: int) -> float:
    """FLOPs of a decode step averaged over the ``new`` steps: ``2·params`` per row (each weight one
    multiply-add; the embedding lookup counted too, a slight over-count) plus the attention scores
    and weighted sum over the ``prompt + new/2`` cached positions."""
    attention = 4 * fields["num_layers"] * fields["num_heads"] * fields["head_dim"] * (prompt + new / 2)
    return batch * (2 * params + attention)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of each row's tokens before the first disagreement (greedy decoding in bf16 may
    part ways at a near-tie of two logits; identical weights and prompts otherwise agree)."""
    same = np.cumprod(a == b, axis=1)
    return float(same.sum(axis=1).mean() / a.shape[1])


def run(args) -> dict:
    import jax
    from flax import nnx

    from mathvlm import config as mc
    from mathvlm import hf
    from mathvlm.models import generate as gen
    from mathvlm.train.build import build_model

    fields = QUICK if args.quick else LLAMA_134M
    new, prompt_len = (8, 8) if args.quick else (args.new, args.prompt)
    reps = 1 if args.quick else args.reps
    batches = [int(b) for b in args.batches.split(",")]
    model = build_model(mc.ConfigDict({"name": "decoder_lm", **fields, "param_dtype": args.dtype,
                                       "dtype": args.dtype}), seed=0)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    torch = None if args.no_torch else common.torch_or_none()
    torch_model = None
    if torch is not None:
        from transformers import LlamaForCausalLM

        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(model, folder)
            torch_model = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
        torch_model.eval()

    bandwidth = common.read_bandwidth(64 if args.quick else 512)
    peak_bandwidth = max(bandwidth.values())
    peak_size = 1024 if args.quick else 4096
    peak_flops = common.matmul_flops(peak_size) / common.matmul_peak(peak_size).best
    itemsize = jax.numpy.dtype(args.dtype).itemsize
    figures = {"config": {**fields, "dtype": args.dtype, "new_tokens": new, "prompt": prompt_len},
               "params": int(params), "machine": common.machine(), "batch": {},
               "read_gb_per_s_by_threads": bandwidth, "peak_tflops": peak_flops / 1e12}
    rows = []
    for batch in batches:
        tokens, mask = _prompts(fields["vocab_size"], batch, prompt_len)

        def jax_generate():
            out = gen.generate(model, tokens, mask, max_new_tokens=new)
            return np.asarray(out.tokens)

        first = common.Timings()
        jax_tokens = first.time(jax_generate)          # compile + first call
        compiled = gen._generate._cache_size()
        if torch_model is not None:  # warm-up (untimed, like the compile) and the faster thread count
            threads = _pick_torch_threads(torch, lambda: _torch_generate(
                torch, torch_model, tokens, mask, min(new, 16)))
        dispatch = common.Timings()                     # host time until the call returns
        jax_t, torch_t = common.Timings(), common.Timings()
        torch_tokens = None
        for _ in range(reps):
            out = dispatch.time(lambda: gen.generate(model, tokens, mask, max_new_tokens=new))
            jax.block_until_ready(out)
            jax_t.time(jax_generate)
            if torch_model is not None:
                torch_tokens = torch_t.time(lambda: _torch_generate(torch, torch_model, tokens, mask, new))
        recompiles = gen._generate._cache_size() - compiled
        result = {"jax_tokens_per_s": batch * new / jax_t.median,
                  "jax_tokens_per_s_best": batch * new / jax_t.best,
                  "jax_ms_per_step": 1e3 * jax_t.median / new,
                  "jax_compile_and_first_call_s": first.best,
                  "jax_dispatch_ms": 1e3 * dispatch.median, "jax_recompiles": int(recompiles)}
        step_bytes = min_bytes_per_step(fields, itemsize, params, batch, prompt_len, new)
        step_seconds = max(step_bytes / (peak_bandwidth * 1e9),
                           flops_per_step(fields, params, batch, prompt_len, new) / peak_flops)
        result.update(min_mb_per_step=step_bytes / 1e6,
                      memory_ceiling_tokens_per_s=batch * peak_bandwidth * 1e9 / step_bytes,
                      ceiling_tokens_per_s=batch / step_seconds,
                      jax_read_gb_per_s=step_bytes / (jax_t.median / new) / 1e9)
        row = [f"batch {batch}", result["jax_tokens_per_s"], result["jax_ms_per_step"]]
        if torch_model is not None:
            result.update(torch_tokens_per_s=batch * new / torch_t.median,
                          torch_tokens_per_s_best=batch * new / torch_t.best,
                          torch_ms_per_step=1e3 * torch_t.median / new,
                          speedup=torch_t.median / jax_t.median,
                          speedup_best=torch_t.best / jax_t.best,
                          agreement=_agreement(jax_tokens, torch_tokens),
                          torch_threads=torch.get_num_threads(), torch_warmup_s_by_threads=threads)
            row += [f"{result['torch_tokens_per_s']:.1f} ({result['torch_threads']})", result["torch_ms_per_step"],
                    f"x{result['speedup']:.2f}", f"{result['agreement']:.0%}"]
        else:
            row += ["", "", "", ""]
        row += [f"{result['jax_dispatch_ms']:.1f} ms", result["jax_recompiles"],
                result["min_mb_per_step"], result["ceiling_tokens_per_s"], result["jax_read_gb_per_s"]]
        rows.append(row)
        figures["batch"][str(batch)] = result
    print(common.table(
        f"decode: {params / 1e6:.1f}M-param LLaMA in {args.dtype}, greedy, prompt {prompt_len}, "
        f"{new} new tokens, {reps} timed call(s) per side; load {figures['machine']['load_avg_1m']}; "
        "read bandwidth " + ", ".join(f"{v:.1f} GB/s ({k} thr)" for k, v in bandwidth.items())
        + f", bf16 matmul peak {peak_flops / 1e12:.3f} TFLOP/s",
        ["", "mathvlm tok/s", "ms/step", "transformers tok/s (threads)", "ms/step", "ratio", "same tokens",
         "host per call", "recompiles", "min MB/step", "ceiling tok/s", "mathvlm GB/s"], rows))
    if torch_model is not None:
        figures["speedup_min"] = min(r["speedup"] for r in figures["batch"].values())
    return figures


def _pick_torch_threads(torch, call) -> dict:
    """Time ``call`` with every core and with one thread (after a warm-up call) and keep the faster:
    on a shared machine OpenMP's barrier spinning can make the all-core run several times slower."""
    import os

    seconds = {}
    call()
    for n in sorted({os.cpu_count() or 1, 1}, reverse=True):
        torch.set_num_threads(n)
        t = common.Timings()
        t.time(call)
        seconds[n] = t.wall[-1]
    torch.set_num_threads(min(seconds, key=seconds.get))
    return seconds


def _torch_generate(torch, model, tokens, mask, new):
    with torch.no_grad():
        out = model.generate(torch.from_numpy(tokens.astype(np.int64)),
                             attention_mask=torch.from_numpy(mask.astype(np.int64)),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[:, tokens.shape[1]:].numpy()
