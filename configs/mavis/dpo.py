"""MAVIS stage 4, DPO: the stage-3 model prefers the engine's chain of thought (chosen) over its own
wrong one (rejected); only LoRA trains, the reference is the frozen stage-3 model.

    python -m mathvlm.tools.dpo_pairs --config configs/mavis/instruct.py:size=tiny --checkpoint runs/instruct \
        --num 512 --out runs/dpo_pairs
    python -m mathvlm.main --config configs/mavis/dpo.py:size=tiny,init=runs/instruct,data=runs/dpo_pairs/pairs.jsonl \
        --workdir runs/dpo

The paper: 88K pairs found among 582K engine problems, same hyper-parameters as stage 2 (lr 2e-6, batch
32, LoRA r=128); β is not given, so the usual 0.1. The tiny size trains projector and LLM instead of
LoRA (nothing pretrained to protect).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")


def get_config(arg=None):
    # data: preference rows from `python -m mathvlm.tools.dpo_pairs` (its --out folder + /pairs.jsonl).
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", data="runs/dpo_pairs/pairs.jsonl", steps=0,
                       beta=0.1, eval_examples=48)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"mavis/dpo ({arg.size})"
    config.train.step = "preference"
    config.loss.terms = ({"name": "dpo", "weight": 1.0, "beta": arg.beta},)
    config.init.checkpoint = arg.init
    if arg.size == "tiny":
        recipes.tiny_vlm_stage(config, "instruct", steps=arg.steps or 100, lr=2e-4, seq_len=480,
                               batch_size=8, eval_examples=arg.eval_examples)
        data = config.data
        config.train.trainable = "projector,decoder"
    else:
        config.model = recipes.real_vlm(arg.hf)
        recipes.real_size(config)
        config.init.hf = arg.hf
        config.lora.update({"rank": 128, "alpha": 256.0, "targets": recipes.DECODER_LORA_TARGETS})
        data = recipes.real_engine_data("instruct", arg.hf, batch_size=32)
        config.train.trainable = "lora"
        config.train.steps = arg.steps or 2750          # 1 epoch of 88K pairs at batch 32
        config.optim.update({"lr": 2e-6, "warmup_steps": 50, "weight_decay": 0.0})
        config.checkpoint.every_steps = 500
    data.update({"source": "conversations", "format": "preference_rows", "path": arg.data,
                 "shuffle": True, "length_buckets": None})
    config.data = data
    return mc.finalize(config)
