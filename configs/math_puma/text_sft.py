"""Math-PUMA stage 1: text-only math SFT of the LLM.

    python -m mathvlm.main --config configs/math_puma/text_sft.py:size=tiny --workdir runs/puma1
    python -m mathvlm.main --workdir runs/puma1_7b --config \
        configs/math_puma/text_sft.py:size=7b,hf=/ckpt/Qwen2-7B-Instruct,data=/data/stage1.json

Real sizes start from a local Qwen2-Instruct transformers folder (weights and tokenizer) and read
Math-PUMA stage-1 rows (``{"instruction", "output"}``, JSON or JSONL) with the ChatML template. The
released scripts' optimiser settings: AdamW lr 3e-5, cosine, warmup 1%, weight decay 0.1, global batch
128, one epoch (~200K rows → ``steps=1560``), length 2048, seed 3407. ``size=tiny`` trains the tiny
decoder on the built-in text arithmetic instead, with no files; ``size=tiny-vlm`` trains the decoder of
the tiny VLM on the engine's text-only problems (the demo chain's stand-in for a math-pretrained LLM;
``init=`` a CLIP-Math run to carry its image tower along untouched).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "tiny-vlm", "1.5b", "7b")


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", data="", init="", steps=0)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"math_puma/text_sft ({arg.size})"
    config.loss.terms = [{"name": "next_token", "weight": 1.0}]
    if arg.size == "tiny":
        config.model = mc.ConfigDict({"name": "decoder_lm", "preset": "tiny", "vocab_size": 260})
        config.data = mc.ConfigDict({"source": "text_math", "tokenizer": "bytes", "batch_size": 32,
                                     "seq_len": 64, "max_operand": 20, "max_bad_fraction": 0.1})
        config.train.steps = arg.steps or 300
        config.optim.lr, config.optim.warmup_steps = 3e-3, 20
    elif arg.size == "tiny-vlm":
        recipes.tiny_vlm_stage(config, "instruct", steps=arg.steps or 400, lr=2e-3, seq_len=384,
                               version="text_only")
        config.init.checkpoint, config.init.params = arg.init, "vision_model:vision_tower"
        config.train.trainable = "decoder"  # text-only rows never reach the image tower or projector
    else:
        if not (arg.hf and arg.data):
            raise mc.ConfigError(f"size={arg.size} needs hf=<local Qwen2-{arg.size.upper()}-Instruct "
                                 "folder> and data=<Math-PUMA stage-1 json/jsonl>")
        config.seed = 3407
        config.init.hf = arg.hf
        config.model = mc.ConfigDict({"name": "hf", "dtype": "bfloat16", "param_dtype": "float32",
                                      "scan_layers": True, "remat": "full"})
        config.data = mc.ConfigDict({"source": "conversations", "format": "puma_rows", "path": arg.data,
                                     "tokenizer": arg.hf, "template": "chatml", "batch_size": 128,
                                     "seq_len": 2048, "shuffle": True, "max_bad_fraction": 0.01,
                                     "length_buckets": (512, 1024, 2048)})
        config.train.steps = arg.steps or 1560
        recipes.real_size(config)
        config.optim.update({"lr": 3e-5, "warmup_steps": max(1, config.train.steps // 100),
                             "weight_decay": 0.1, "clip_norm": 1.0, "b2": 0.999})
        config.checkpoint.every_steps = 200
    return mc.finalize(config)
