"""Math-PUMA stage 3, multimodal instruction tuning: full-parameter next-token SFT on multimodal
problems, after the KL alignment of stage 2.

    python -m mathvlm.main --config configs/math_puma/instruct.py:size=tiny,init=runs/puma2 --workdir runs/puma3
    python -m mathvlm.main --workdir runs/puma3_7b --config \
        configs/math_puma/instruct.py:size=7b,hf=/ckpt/puma-qwen2-7b-vlm,init=runs/puma2_7b,data=/data/stage3/train.json,image_root=/data/stage3

Released settings: everything trains; AdamW lr 3e-5, cosine, warmup 1%, weight decay 0.1, global batch
128, one epoch, ChatML with images first, seed 3407.
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", data="", image_root="", steps=0, eval_examples=48)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"math_puma/instruct ({arg.size})"
    config.init.checkpoint = arg.init
    if arg.size == "tiny":
        recipes.tiny_vlm_stage(config, "instruct", steps=arg.steps or 300, lr=1e-3, seq_len=480,
                               eval_examples=arg.eval_examples)
    else:
        recipes.puma_real_stage(config, "instruct", arg.hf, steps=arg.steps or 2000,
                                data_format="puma_rows", data_path=arg.data, image_root=arg.image_root)
    return mc.finalize(config)
