"""MAVIS stage 2, diagram–language alignment: the projector (and LoRA on the LLM) learn to caption
engine diagrams through the frozen CLIP-Math image tower.

    python -m mathvlm.main --config configs/mavis/align.py:size=tiny,init=runs/clip_math --workdir runs/align
    python -m mathvlm.main --workdir runs/align_7b --config \
        configs/mavis/align.py:size=7b,hf=/ckpt/llava-format-mammoth2-7b,init=runs/clip_math_l

The paper: 1 epoch of MAVIS-Caption, batch 32, lr 2e-6, LoRA r=128. ``init`` is the CLIP-Math run whose
image tower is loaded (``init.params`` maps its ``vision_model`` onto the VLM's ``vision_tower``).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", steps=0)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"mavis/align ({arg.size})"
    config.init.checkpoint, config.init.params = arg.init, "vision_model:vision_tower"
    if arg.size == "tiny":
        # The tiny LLM has no pretraining to protect, so it trains whole instead of through LoRA.
        recipes.tiny_vlm_stage(config, "caption", steps=arg.steps or 300, lr=2e-3, seq_len=288)
        config.train.trainable = "projector,decoder"
    else:
        config.model = recipes.real_vlm(arg.hf)
        recipes.real_size(config)
        config.init.hf = arg.hf
        config.lora.update({"rank": 128, "alpha": 256.0, "targets": recipes.DECODER_LORA_TARGETS})
        config.data = recipes.real_engine_data("caption", arg.hf, batch_size=32, template="plain")
        config.train.trainable = "projector,lora"
        config.train.steps = arg.steps or 18_375        # 1 epoch of 588K captions at batch 32
        config.optim.update({"lr": 2e-6, "warmup_steps": 200, "weight_decay": 0.0})
        config.checkpoint.every_steps = 1000
    return mc.finalize(config)
