"""Toy experiment: does Math-PUMA's KL alignment close the text-rich / vision-rich gap better than plain
next-token training on the vision-rich members? (issue 13)

    python -m mathvlm.main --config configs/experiments/puma_gap.py --workdir runs/grounding

It continues the grounding chain (``configs/experiments/grounding.py``; the same workdir reads its
finished stages back instead of retraining) with two branches from its instruction-tuned model, each
``steps`` steps with the same trainable parameters (image tower + projector, Math-PUMA stage 2), data
and learning rate:

* ``puma_kl``  — Math-PUMA stage 2 on text-rich / vision-rich pairs of ``function_shape``
  problems: (1 − λ)·CE(vision-rich) + λ·KL(text-rich ‖ vision-rich), λ = 0.1;
* ``ntp_weak`` — next-token CE on the vision-rich members alone (the same questions and pictures).

The text-rich member states the drawn expression (the text answers it: its kind of curve is the letter),
the vision-rich one leaves it to the curve. After each branch the held-out evaluator asks text-dominant
and vision-dominant problems; the gap between the two is in ``<workdir>/summary.md``.
"""

import os

from mathvlm import config as mc
from mathvlm import recipes

GROUNDING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grounding.py")
FAMILIES = ("function_shape",)


def get_config(arg=None):
    arg = mc.parse_arg(arg, scale=1.0, eval_examples=128, steps=150)
    config = mc.load(f"{GROUNDING}:scale={arg.scale},eval_examples={arg.eval_examples}")
    steps = max(2, int(arg.steps * arg.scale))
    evaluators = (recipes.engine_eval(("text_dominant", "vision_dominant"), arg.eval_examples,
                                      FAMILIES),)
    shared = {"data.families": FAMILIES, "data.answer": "letter", "data.seq_len": 400,
              "data.length_buckets": (200, 300, 400), "eval.evaluators": evaluators,
              "eval.max_new_tokens": 64, "train.trainable": "vision_tower,projector",
              "model.feature_norm": "calibrated"}  # the chain's statistics, carried over
    with config.unlocked():
        config.name = "experiment: Math-PUMA KL alignment vs next-token training on vision-rich members"
        config.stages = tuple(config.stages) + (
            {"name": "puma_kl", "config": f"math_puma/kl_align.py:size=tiny,steps={steps},eval_examples=0",
             "init_from": "instruct", "set": shared},
            {"name": "ntp_weak", "config": f"math_puma/instruct.py:size=tiny,steps={steps},eval_examples=0",
             "init_from": "instruct",
             "set": {**shared, "data.version": "vision_dominant", "optim.lr": 1e-3}},
        )
    return mc.finalize(config)
