"""Math-LLaVA's image classifiers: a ViT with a new linear head trained with
cross-entropy to rate an image's comprehension complexity (4 levels, ``label=complexity``) or its
clarity (0 blurred/poor, 1 clear; ``label=clarity``). Their scores drive data selection
(``python -m mathvlm.tools.select``).

    python -m mathvlm.main --config configs/math_llava/complexity_classifier.py:size=tiny --workdir runs/complexity
    python -m mathvlm.main --config configs/math_llava/complexity_classifier.py:size=tiny,label=clarity \
        --workdir runs/clarity
    python -m mathvlm.main --workdir runs/complexity_l --config \
        configs/math_llava/complexity_classifier.py:size=vit-l,init=runs/clip_math_l,data=labels.jsonl,image_root=/data/images

Tiny, measured on held-out engine images (``python -m mathvlm.tools.select --classifier RUN --heldout 256``):
complexity after the default 300 steps 57% (majority class 49%); clarity after 40 steps 85% (52%).

Labels come from the data engine (complexity for free; clarity from degraded copies) unless ``data=``
names a user label file (``{"image", "label"}`` rows, see :mod:`mathvlm.data.engine_labels`).

Released settings: ViT-Large-Patch16-224 + FC, CE, lr 2e-4, 5 epochs of the 10K GPT-4V-labelled images.
``size=vit-l`` keeps those numbers on the CLIP ViT-L/14-224 shape, the large tower this codebase reads
(start it from a CLIP run with ``init=RUN``; ``params=vision_tower:vision_model`` for a VLM run).
"""

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "vit-l")
# The tiny VLM's image tower shape (64 px, patch 8), so a classifier can start from a CLIP-Math run.
TINY_VISION = dict(recipes.TINY_VISION)


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", label="complexity", steps=0, init="", params="vision_model",
                       data="", image_root="")
    recipes.check_size(arg.size, SIZES)
    if arg.label not in ("complexity", "clarity"):
        raise mc.ConfigError(f"label={arg.label!r}; labels: complexity, clarity")
    classes = 4 if arg.label == "complexity" else 2
    config = mc.defaults()
    config.name = f"math_llava/{arg.label}_classifier ({arg.size})"
    config.train.step = "classifier"
    config.loss.terms = ({"name": "classification", "weight": 1.0},)
    config.init.checkpoint = arg.init
    if arg.init:
        config.init.params = arg.params
    # Complexity: the engine's function problems take their level from the question asked (value,
    # extremum, integral, ...), not from the picture, so they would teach an image classifier label noise.
    families = (("plane_geometry", "analytic_geometry") if arg.label == "complexity" else
                ("plane_geometry", "analytic_geometry", "function"))
    data = {"source": "engine_images", "label": arg.label, "version": "mixed", "families": families,
            "max_bad_fraction": 0.0}
    if arg.size == "tiny":
        config.model = mc.ConfigDict({"name": "vit_classifier", "vision_preset": "tiny",
                                      "vision": dict(TINY_VISION), "num_classes": classes, "pool": "pooled"})
        data.update({"batch_size": 32, "image_size": TINY_VISION["image_size"], "render_size": 128,
                     "num_examples": 1_000_000})
        # Clarity is learnt in a few dozen steps; complexity (counting shapes at 64 px) needs hundreds.
        config.train.steps = arg.steps or (300 if arg.label == "complexity" else 100)
        config.optim.update({"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.0})
    else:
        config.model = mc.ConfigDict({"name": "vit_classifier", "vision_preset": "clip-vit-l-14-224",
                                      "num_classes": classes, "pool": "pooled"})
        recipes.real_size(config)
        data.update({"batch_size": 32, "image_size": 224, "render_size": 224, "num_examples": 10_000,
                     "shuffle": True})
        config.train.steps = arg.steps or 1563          # 5 epochs of 10K images at batch 32
        config.optim.update({"lr": 2e-4, "warmup_steps": 50, "weight_decay": 0.0})
        config.checkpoint.every_steps = 500
    if arg.data:
        data.update({"path": arg.data, "image_root": arg.image_root, "shuffle": True})
    config.data = mc.ConfigDict(data)
    return mc.finalize(config)
