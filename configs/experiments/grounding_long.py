"""Toy experiment: a longer instruction stage for the visual-grounding probe.

    python -m mathvlm.main --config configs/experiments/grounding.py --workdir runs/grounding
    python -m mathvlm.main --config configs/experiments/grounding_long.py --workdir runs/grounding_long

From the grounding chain's aligned model (``init``), ``steps`` steps of instruction tuning on
``function_shape`` problems in the text-dominant and vision-dominant versions, letter answers, the image
tower frozen and its features standardised with the statistics alignment measured (as in the chain);
every 500 steps the held-out evaluator asks 128 problems per version and a control shows each
vision-dominant question another problem's diagram. The text-dominant curve says how fast the model
learns the letter when the text states it; the vision-dominant one, against its control, whether it
learns it from the picture.
"""

import os

from mathvlm import config as mc
from mathvlm import recipes

INSTRUCT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mavis", "instruct.py")
FAMILIES = ("function_shape",)


def get_config(arg=None):
    arg = mc.parse_arg(arg, steps=2000, init="runs/grounding/align", eval_examples=128)
    config = mc.load(f"{INSTRUCT}:size=tiny,steps={arg.steps},eval_examples=0,init={arg.init}")
    with config.unlocked():
        config.name = "experiment: long instruction stage on function_shape (text- and vision-dominant)"
        config.data.update({"families": FAMILIES, "answer": "letter", "seq_len": 400,
                            "version": "vision_dominant,text_dominant", "length_buckets": (200, 300, 400)})
        config.model.feature_norm = "calibrated"
        config.eval.update({"every_steps": 500, "max_new_tokens": 16, "evaluators": (
            recipes.engine_eval(("vision_dominant", "text_dominant"), arg.eval_examples, FAMILIES),
            recipes.engine_blind_eval(("vision_dominant",), arg.eval_examples, FAMILIES, mode="shuffled"))})
    return mc.finalize(config)
