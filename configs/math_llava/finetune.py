"""Math-LLaVA: one stage of full fine-tuning of LLaVA-1.5 (LLM + projector; the CLIP tower frozen) on
data selected by image complexity in the ratio 2:3:4:1 over levels 0–3.

    python -m mathvlm.main --config configs/math_llava/finetune.py:size=tiny --workdir runs/math_llava
    python -m mathvlm.main --workdir runs/math_llava_13b --config \
        configs/math_llava/finetune.py:size=13b,hf=/ckpt/llava-v1.5-13b-hf,data=/data/MathV360K/train.json,image_root=/data/MathV360K/images

Released settings: Vicuna-v1 template, lr 2e-5, cosine, warmup 3%, weight decay 0, batch 16 per
device, 2 epochs, length 2048. The tiny size draws engine problems in the complexity ratio
(``ratio=2:3:4:1``, any four weights) — the knob of Math-LLaVA's ablation (its Table 8).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "13b")


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", data="", image_root="", ratio="2:3:4:1",
                       steps=0, eval_examples=48)
    recipes.check_size(arg.size, SIZES)
    try:
        ratio = tuple(float(r) for r in arg.ratio.split(":"))
    except ValueError:
        raise mc.ConfigError(f"ratio={arg.ratio!r}: give four weights like 2:3:4:1") from None
    config = mc.defaults()
    config.name = f"math_llava/finetune ({arg.size}, ratio {arg.ratio})"
    config.train.trainable = "projector,decoder"
    config.init.checkpoint = arg.init
    if arg.size == "tiny":
        recipes.tiny_vlm_stage(config, "instruct", steps=arg.steps or 400, lr=2e-3, seq_len=480,
                               eval_examples=arg.eval_examples)
        # The levels of every problem are scanned at start-up (~13 ms each): a pool of 4,000.
        config.data.update({"complexity_ratio": ratio, "num_examples": 4_000})
    else:
        config.model = recipes.real_vlm(arg.hf)
        recipes.real_size(config)
        config.init.hf = arg.hf
        data = recipes.real_engine_data("instruct", arg.hf, batch_size=16)
        if arg.data:
            data.update({"source": "conversations", "format": "llava_json", "path": arg.data,
                         "image_root": arg.image_root, "shuffle": True})
        else:
            data.complexity_ratio = ratio
            data.num_examples = 100_000
        config.data = data
        config.train.steps = arg.steps or 45_000        # 2 epochs of 360K at batch 16
        config.optim.update({"lr": 2e-5, "warmup_steps": int(0.03 * config.train.steps),
                             "weight_decay": 0.0})
        config.checkpoint.every_steps = 2000
    return mc.finalize(config)
