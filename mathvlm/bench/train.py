"""``python -m mathvlm.bench train``: tokens/s of the repo's train step against a transformers (PyTorch)
train step on the same LLaMA config, the same weights, batch, sequence length and precision, and the
step's MFU against this machine's bf16 matmul peak measured in the same run.

Both sides do what their users run: here :class:`mathvlm.train.loop.Trainer` (the config's model, the
registered ``next_token`` step and loss, optax AdamW with global-norm clipping, the state donated to a
jitted step, the non-finite guard), bf16 compute over float32 parameters; there
``LlamaForCausalLM`` under ``torch.autocast("cpu", bfloat16)``, ``loss.backward()``,
``clip_grad_norm_`` and ``torch.optim.AdamW``. The weights are the Trainer's initial ones, written with
:func:`mathvlm.hf.save_pretrained` and read by ``from_pretrained``, so the first losses agree. Steps
alternate in rounds (peak, JAX steps, torch steps) so a shared machine's load hits both sides alike.
"""

from __future__ import annotations

import statistics
import tempfile

import numpy as np

from mathvlm.bench import common

# A ~134M-parameter LLaMA (the brief's size): 768 wide, 12 layers, 12 heads, SwiGLU 2048, 32k vocab.
LLAMA_134M = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_layers": 12,
              "num_heads": 12, "num_kv_heads": 12, "head_dim": 64, "max_position": 2048,
              "rms_eps": 1e-5}
QUICK = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
         "num_heads": 4, "num_kv_heads": 4, "head_dim": 16, "max_position": 256, "rms_eps": 1e-5}


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak-size", type=int, default=4096, help="square bf16 matmul for the peak")
    parser.add_argument("--exact-logits-grad", action="store_true",
                        help="keep the logits' gradient float32 in the LM-head backward matmuls "
                             "(default: bf16, as under torch autocast)")
    parser.add_argument("--no-torch", action="store_true", help="skip the transformers side")


def trainer_config(model_fields: dict, *, batch: int, seq: int, logits_grad_dtype):
    from mathvlm import config as mc

    config = mc.defaults()
    config.name = "bench: train step"
    config.mesh.data = 1
    config.model = mc.ConfigDict({"name": "decoder_lm", **model_fields, "dtype": "bfloat16",
                                  "param_dtype": "float32", "logits_grad_dtype": logits_grad_dtype})
    config.data.batch_size, config.data.seq_len = batch, seq
    config.optim.update({"lr": 1e-4, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.01})
    config.train.steps = 1000
    return config


def model_flops_per_token(num_params: int, fields: dict, seq: int) -> tuple[float, int]:
    """``6·N + 12·layers·(heads·head_dim)·seq`` (PaLM's count, fwd + bwd) with N the parameters that
    multiply: all but the input embedding table, which is a lookup. Returns (flops, N)."""
    n = num_params - fields["vocab_size"] * fields["hidden_size"]
    attention = 12 * fields["num_layers"] * fields["num_heads"] * fields["head_dim"] * seq
    return 6.0 * n + attention, n


def _per_round(times: list[float], steps: int) -> list[float]:
    """Median step time of each round."""
    return [statistics.median(times[i:i + steps]) for i in range(0, len(times), steps)]


def _batch(vocab: int, batch: int, seq: int) -> dict:
    """Random tokens; the last position is unsupervised so both sides score the same seq−1 targets
    (transformers shifts ``labels`` inside the model)."""
    rows = np.random.default_rng(0).integers(3, vocab, (batch, seq + 1)).astype(np.int32)
    loss_mask = np.ones((batch, seq), np.float32)
    loss_mask[:, -1] = 0
    return {"tokens": rows[:, :seq], "targets": rows[:, 1:], "attention_mask": np.ones((batch, seq), np.int32),
            "loss_mask": loss_mask}


class TorchStep:
    """transformers' LLaMA train step under bf16 autocast, on the weights in ``folder``."""

    def __init__(self, torch, folder: str, batch: dict):
        from transformers import LlamaForCausalLM

        self.torch = torch
        self.model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.ids = torch.from_numpy(batch["tokens"].astype(np.int64))

    def __call__(self) -> float:
        torch = self.torch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = self.model(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _pick_torch_threads(torch, step) -> tuple[float, dict]:
    """Give transformers its best thread count: one warm-up step with every core, one with a single
    thread, then keep the faster. On a shared machine OpenMP's barrier spinning can make the
    all-core step several times slower than the single-threaded one; on a quiet one all cores win.
    Returns (first loss, {threads: warm-up step seconds})."""
    import os

    counts = sorted({os.cpu_count() or 1, 1}, reverse=True)
    seconds, loss0 = {}, None
    for n in counts:
        torch.set_num_threads(n)
        t = common.Timings()
        loss = t.time(step)
        loss0 = loss if loss0 is None else loss0
        if n == counts[0]:  # the very first step also pays one-off costs: time a second one
            t.time(step)
        seconds[n] = t.wall[-1]
    torch.set_num_threads(min(seconds, key=seconds.get))
    return loss0, seconds


def run(args) -> dict:
    import jax

    from mathvlm import hf, sharding
    from mathvlm.train.loop import Trainer

    fields = QUICK if args.quick else LLAMA_134M
    batch_size, seq = (2, 32) if args.quick else (args.batch, args.seq)
    steps, rounds = (1, 1) if args.quick else (args.steps, args.rounds)
    peak_size = 512 if args.quick else args.peak_size
    config = trainer_config(fields, batch=batch_size, seq=seq,
                            logits_grad_dtype=None if args.exact_logits_grad else "bfloat16")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    trainer = Trainer(config, mesh)
    batch = _batch(fields["vocab_size"], batch_size, seq)
    tokens = batch_size * seq
    flops_per_token, n_matmul = model_flops_per_token(trainer.num_params, fields, seq)

    def jax_step():
        metrics = trainer.step(batch)
        return float(jax.device_get(metrics["loss"]))

    torch = None if args.no_torch else common.torch_or_none()
    torch_step = None
    with tempfile.TemporaryDirectory() as folder:
        if torch is not None:
            hf.save_pretrained(trainer.model, folder)  # the same initial weights for both sides
            torch.manual_seed(0)
            torch_step = TorchStep(torch, folder, batch)
    first = common.Timings()
    jax_loss0 = first.time(jax_step)   # compile + first step
    torch_threads = {}
    if torch_step is not None:
        torch_loss0, torch_threads = _pick_torch_threads(torch, torch_step)
    peak, jax_t, torch_t = common.Timings(), common.Timings(), common.Timings()
    for _ in range(rounds):   # one round: a peak matmul, then each side's steps, back to back
        common.matmul_peak(peak_size, reps=1, timings=peak)
        for _ in range(steps):
            jax_t.time(jax_step)
        if torch_step is not None:
            for _ in range(steps):
                torch_t.time(torch_step)

    peak_flops = common.matmul_flops(peak_size)
    jax_tps, jax_best = tokens / jax_t.median, tokens / jax_t.best
    # Per-round pairs (this round's peak and steps ran under the same load) give ratios robust to a
    # shared machine's load drifting between rounds; the medians over rounds are the headline.
    jax_round = _per_round(jax_t.wall, steps)
    mfu_rounds = [flops_per_token * tokens / j / (peak_flops / p) for j, p in zip(jax_round, peak.wall)]
    figures = {
        "config": {**fields, "batch": batch_size, "seq": seq, "dtype": "bf16 compute, f32 params",
                   "logits_grad_dtype": config.model.logits_grad_dtype},
        "rounds": rounds, "steps_per_round": steps,
        "params": trainer.num_params, "matmul_params": n_matmul, "flops_per_token": flops_per_token,
        "jax_tokens_per_s": jax_tps, "jax_tokens_per_s_best": jax_best,
        "jax_step_s": jax_t.median, "jax_compile_and_first_step_s": first.best,
        "jax_tokens_per_cpu_s": tokens / jax_t.cpu_median,
        "peak_tflops": peak_flops / peak.median / 1e12, "peak_tflops_best": peak_flops / peak.best / 1e12,
        "model_tflops_per_s": flops_per_token * jax_tps / 1e12,
        "mfu": statistics.median(mfu_rounds), "mfu_rounds": mfu_rounds,
        "mfu_best": flops_per_token * jax_best / (peak_flops / peak.best),
        "jax_first_loss": jax_loss0, "machine": common.machine(),
    }
    rows = [["peak bf16 matmul (f32 acc)", f"{peak_size}^2", figures["peak_tflops"],
             figures["peak_tflops_best"], ""],
            ["mathvlm Trainer step", f"{jax_t.median:.2f}s/step", jax_tps, jax_best,
             f"MFU {figures['mfu']:.0%}"]]
    if torch_step is not None:
        torch_tps = tokens / torch_t.median
        speedups = [t / j for t, j in zip(_per_round(torch_t.wall, steps), jax_round)]
        figures.update(torch_tokens_per_s=torch_tps, torch_tokens_per_s_best=tokens / torch_t.best,
                       torch_step_s=torch_t.median, torch_threads=torch.get_num_threads(),
                       torch_warmup_step_s_by_threads=torch_threads,
                       torch_tokens_per_cpu_s=tokens / torch_t.cpu_median, torch_first_loss=torch_loss0,
                       speedup=statistics.median(speedups), speedup_rounds=speedups,
                       speedup_of_medians=jax_tps / torch_tps,
                       speedup_best=jax_best / (tokens / torch_t.best),
                       speedup_cpu=torch_t.cpu_median / jax_t.cpu_median)
        rows.append([f"transformers step (bf16 autocast, {torch.get_num_threads()} thr)",
                     f"{torch_t.median:.2f}s/step", torch_tps,
                     tokens / torch_t.best, f"x{figures['speedup']:.2f}"])
    print(common.table(
        f"train: {trainer.num_params / 1e6:.1f}M-param LLaMA, batch {batch_size}x{seq}, "
        f"{rounds} round(s) x {steps} step(s) per side; load {figures['machine']['load_avg_1m']}",
        ["", "shape / time", "median (tok/s | TFLOP/s)", "best", "median of rounds"], rows))
    loss_line = f"first-step loss: mathvlm {jax_loss0:.4f}"
    if torch_step is not None:
        loss_line += f", transformers {torch_loss0:.4f} (same weights and tokens)"
    print(loss_line)
    return figures
