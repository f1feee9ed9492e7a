"""MAVIS stage 1, CLIP-Math: contrastive fine-tuning of the CLIP image tower on diagram captions with
the text tower frozen.

    python -m mathvlm.main --config configs/mavis/clip_math.py:size=tiny --workdir runs/clip_math
    python -m mathvlm.main --workdir runs/clip_math_l --config \
        configs/mavis/clip_math.py:size=vit-l-336,hf=/ckpt/clip-vit-large-patch14-336

The paper: 10 epochs, batch 16, lr 2e-6 on MAVIS-Caption (588K); here the captions come from the
built-in data engine (``engine_captions``). With batch 16 there are only 15 in-batch negatives, as in
the paper; raise ``data.batch_size`` for more (the loss uses the whole global batch).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "vit-l-336")


def get_config(arg=None):
    # width/layers: the towers' size at size=tiny (the demo's VLM takes the 32-wide, 2-layer tower; wider
    # towers are for measuring what capacity bounds retrieval)
    arg = mc.parse_arg(arg, size="tiny", hf="", steps=0, width=32, layers=2)
    if arg.size not in SIZES:
        raise mc.ConfigError(f"size={arg.size!r}; sizes: {SIZES}")
    config = mc.defaults()
    config.name = f"mavis/clip_math ({arg.size})"
    config.train.step = "contrastive"
    config.loss.terms = ({"name": "clip", "weight": 1.0},)
    # The image tower, its projection and the temperature learn; the (pretrained) text tower is the
    # fixed target. At size tiny there is no pretrained text tower, so both towers train.
    config.train.trainable = "vision_model,visual_projection,logit_scale"
    if arg.size == "tiny":
        config.train.trainable = "all"
        size = {"hidden_size": arg.width, "intermediate_size": 2 * arg.width, "num_layers": arg.layers}
        config.model = mc.ConfigDict({"name": "clip_dual_encoder", "projection_dim": arg.width,
                                      "vision": {"image_size": 64, "patch_size": 8, **size},
                                      "text": {"vocab_size": 260, "max_position": 192,
                                               "eos_token_id": 258, **size}})
        config.data = mc.ConfigDict({"source": "engine_captions", "tokenizer": "bytes", "batch_size": 32,
                                     "seq_len": 192, "image_size": 64, "max_bad_fraction": 0.0,
                                     "families": ("plane_geometry", "analytic_geometry", "function")})
        config.train.steps = arg.steps or 200
        config.optim.update({"lr": 1e-3, "warmup_steps": 10})
    else:
        if not arg.hf:
            raise mc.ConfigError("size=vit-l-336 needs hf=<local openai/clip-vit-large-patch14-336 folder>")
        config.init.hf = arg.hf
        config.model = mc.ConfigDict({"name": "hf"})
        recipes.real_size(config)
        config.data = mc.ConfigDict({"source": "engine_captions", "tokenizer": arg.hf, "batch_size": 16,
                                     "seq_len": 77, "image_size": recipes.folder_geometry(arg.hf, 336, 576)[0],
                                     "max_bad_fraction": 0.0})
        config.train.steps = arg.steps or 367_500     # 10 epochs of 588K captions at batch 16
        config.optim.update({"lr": 2e-6, "warmup_steps": 1000, "weight_decay": 0.0})
        config.checkpoint.every_steps = 5000
    # Held-out diagram → caption retrieval among 100 pairs, before training (step 0) and at the end.
    config.eval.evaluators = ({"name": "engine_retrieval", "num_examples": 100},)
    config.eval.at_start = True
    return mc.finalize(config)
