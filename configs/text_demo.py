"""The text-only demo: a tiny decoder learns text arithmetic with worked answers in about a minute.

    python -m mathvlm.main --config configs/text_demo.py --workdir runs/text_demo

The shortest end-to-end path (grain input, a sharded NNX decoder, the next-token loss, AdamW, KV-cache
evaluation, metrics.jsonl + TensorBoard); the tests of the loop, resume and multi-process runs use it.
The README's main job is the multimodal chain, ``configs/demo.py``.
"""

from mathvlm import config as mc


def get_config(arg=None):
    arg = mc.parse_arg(arg, steps=1500, batch_size=32)
    config = mc.defaults()
    config.name = "demo: tiny decoder on text arithmetic"
    config.model = mc.ConfigDict({"name": "decoder_lm", "preset": "tiny", "vocab_size": 260})
    config.data = mc.ConfigDict({"source": "text_math", "tokenizer": "bytes", "batch_size": arg.batch_size,
                                 "seq_len": 64, "max_operand": 20})
    config.loss.terms = [{"name": "next_token", "weight": 1.0}]
    config.train.steps = arg.steps
    config.train.log_every = 50
    config.optim.lr = 3e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 0.01
    config.eval.evaluators = [{"name": "text_math", "num_examples": 64, "max_operand": 20}]
    return mc.finalize(config)
