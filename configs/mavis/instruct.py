"""MAVIS stage 3, instruction tuning: engine problems in every MathVerse version, answered with the
engine's chain of thought; projector and LLM (LoRA at 7B) train, the CLIP-Math tower stays frozen.

    python -m mathvlm.main --config configs/mavis/instruct.py:size=tiny,init=runs/align --workdir runs/instruct
    python -m mathvlm.main --workdir runs/instruct_7b --config \
        configs/mavis/instruct.py:size=7b,hf=/ckpt/llava-format-mammoth2-7b,init=runs/align_7b

Same hyper-parameters as stage 2 (batch 32, lr 2e-6, LoRA r=128) on MAVIS-Instruct (834K). The held-out
evaluator reports accuracy per version, family and complexity at the end.
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", steps=0, eval_examples=48)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"mavis/instruct ({arg.size})"
    config.init.checkpoint = arg.init            # the whole stage-2 model (empty params = everything)
    if arg.size == "tiny":
        recipes.tiny_vlm_stage(config, "instruct", steps=arg.steps or 600, lr=2e-3, seq_len=480,
                               eval_examples=arg.eval_examples)
        config.train.trainable = "projector,decoder"
    else:
        config.model = recipes.real_vlm(arg.hf)
        recipes.real_size(config)
        config.init.hf = arg.hf
        config.lora.update({"rank": 128, "alpha": 256.0, "targets": recipes.DECODER_LORA_TARGETS})
        config.data = recipes.real_engine_data("instruct", arg.hf, batch_size=32)
        config.train.trainable = "projector,lora"
        config.train.steps = arg.steps or 26_063        # 1 epoch of 834K at batch 32
        config.optim.update({"lr": 2e-6, "warmup_steps": 300, "weight_decay": 0.0})
        config.checkpoint.every_steps = 1000
    return mc.finalize(config)
