"""Math-PUMA stage 2, progressive upward alignment: the same model reads each problem text-rich
(strong) and vision-rich (weak); the weak pass learns to match the strong one's next-token
distribution (KL, the strong pass a fixed target) plus its own next-token loss.

    python -m mathvlm.main --config configs/math_puma/kl_align.py:size=tiny,init=runs/instruct --workdir runs/puma2
    python -m mathvlm.main --workdir runs/puma2_7b --config \
        configs/math_puma/kl_align.py:size=7b,hf=/ckpt/puma-qwen2-7b-vlm,data=/data/stage2/train.json,image_root=/data/stage2

``hf`` is the stage's starting VLM: SigLIP-so400m + the stage-1 LLM + the gated aligner, assembled by
``python -m mathvlm.tools.convert build-vlm --vision /ckpt/siglip-so400m-patch14-384 --llm EXPORTED_STAGE1
--projector gated --out DIR``. Alternatively ``llm=runs/puma1_7b`` loads the stage-1 run's LLM straight
from its checkpoint into that VLM's decoder (``init.params=:decoder``).

Released settings: ``total = λ·KL + (1 − λ)·CE`` with λ = 0.1, α = 0.5, T = 1 (the ``official`` KL mode
with its z-normalised logits); image tower and adapter train, the LLM is frozen; AdamW lr 3e-5,
cosine, warmup 1%, weight decay 0.1, global batch 128, one epoch. Pairs come from the data engine
(``engine_vlm`` task ``pairs``) or, with ``data=``, from a Math-PUMA stage-2 pair file.
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")
LAMBDA_KL = 0.1


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", hf="", init="", llm="", data="", image_root="", steps=0,
                       eval_examples=48)
    recipes.check_size(arg.size, SIZES)
    config = mc.defaults()
    config.name = f"math_puma/kl_align ({arg.size})"
    config.train.step = "pair"
    # One term: puma_kl already adds (1 − λ)·CE of the weak member to λ·KL.
    config.loss.terms = ({"name": "puma_kl", "weight": 1.0, "mode": "official", "alpha": 0.5,
                          "lam": LAMBDA_KL, "temperature": 1.0},)
    config.train.trainable = "vision_tower,projector"
    config.init.checkpoint = arg.init
    if arg.llm:  # a text-only stage-1 run: its whole model becomes the VLM's decoder
        if arg.init:
            raise mc.ConfigError("give init= (a previous VLM stage) or llm= (a stage-1 LLM run), not both")
        config.init.checkpoint, config.init.params = arg.llm, ":decoder"
    if arg.size == "tiny":
        recipes.tiny_vlm_stage(config, "pairs", steps=arg.steps or 200, lr=1e-3, seq_len=512,
                               eval_examples=arg.eval_examples)
    else:
        recipes.puma_real_stage(config, "pairs", arg.hf, steps=arg.steps or 1000,
                                data_format="puma_pairs", data_path=arg.data, image_root=arg.image_root)
    return mc.finalize(config)
