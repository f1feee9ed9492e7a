"""The CPU demo (README's main job): the papers' stages chained on tiny models and the built-in data
engine, then held-out accuracy per MathVerse version, next to two controls, after each multimodal stage.

    python -m mathvlm.main --config configs/demo.py --workdir runs/demo

1. CLIP-Math (MAVIS 1): contrastive image tower on diagram captions.
2. Text math (Math-PUMA 1): the LLM learns the problems in their text-only version (our stand-in for the
   papers' math-pretrained LLMs).
3. Alignment (MAVIS 2): the projector (and LLM) learn to caption diagrams through the CLIP-Math tower.
4. Instruction tuning (MAVIS 3): the problems in three MathVerse versions, answered with the letter.
5. KL alignment (Math-PUMA 2): vision-rich members pulled towards their text-rich twins (KL + CE).

What makes a tiny model learn to read its pictures in 15 minutes on 2 cores (``configs/experiments/
grounding.py`` measured each): problems it can learn — the engine's ``function_shape`` family ("which
expression matches the graph?": a line, a parabola, |x| or a sine wave, the kind visible along the whole
curve; the question names no kind, so without the picture a model scores 25%) answered with the letter
alone; a CLIP-Math tower frozen after stage 1; and its features standardised with statistics measured at
the start of alignment (``model.feature_norm``: without that the image tokens of different pictures look
nearly alike to the decoder). After stages 4 and 5 the held-out evaluator asks 64 unseen problems in each
version; two controls ask the same vision-dominant questions with the picture zeroed (blind) and with
another held-out problem's diagram (shuffled). ``<workdir>/summary.md`` has the table, ``by_version.png``
the plot. ``scale=0.1`` runs every stage at a tenth of its steps (a smoke run).
"""

import os

from mathvlm import config as mc
from mathvlm import recipes

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("function_shape",)
VERSIONS = ("text_dominant", "vision_intensive", "vision_dominant")  # trained and asked


def get_config(arg=None):
    arg = mc.parse_arg(arg, scale=1.0, eval_examples=64)

    def steps(n):
        return max(2, int(n * arg.scale))

    evaluators = (
        recipes.engine_eval(VERSIONS + ("vision_only", "text_only"), arg.eval_examples, FAMILIES),
        recipes.engine_blind_eval(("vision_dominant",), arg.eval_examples, FAMILIES),
        recipes.engine_blind_eval(("vision_dominant",), arg.eval_examples, FAMILIES, mode="shuffled"),
    )
    families = {"data.families": FAMILIES}
    calibrated = {"model.feature_norm": "calibrated"}  # statistics measured in align, inherited after
    letters = {**families, **calibrated, "data.answer": "letter", "data.seq_len": 400,
               "data.length_buckets": (200, 300, 400)}
    evaluated = {"eval.evaluators": evaluators, "eval.max_new_tokens": 16}
    config = mc.defaults()
    config.name = "demo: MAVIS + Math-PUMA stages on tiny models and the data engine"
    config.job = "chain"
    config.config_dir = HERE
    config.chance = 0.25  # four options
    config.summary_note = (
        "What lets a tiny model read its pictures here (configs/experiments/grounding.py measured each): "
        "problems it can learn (the engine's function_shape family: which of a line, a parabola, |x| and a "
        "sine wave is drawn; the question names no kind), answered with the letter alone; the CLIP-Math "
        "tower frozen after stage 1; and its features standardised with statistics measured at the start "
        "of alignment (model.feature_norm = calibrated).")
    config.stages = (
        {"name": "clip_math", "config": f"mavis/clip_math.py:size=tiny,steps={steps(200)}", "set": families},
        {"name": "text_math", "config": f"math_puma/text_sft.py:size=tiny-vlm,steps={steps(100)}",
         "init_from": "clip_math", "set": {**families, "data.answer": "letter"}},
        {"name": "align", "config": f"mavis/align.py:size=tiny,steps={steps(150)}",
         "init_from": "text_math", "params": "vision_tower,projector,decoder",  # statistics: measured here
         "set": {**families, **calibrated, "train.calibrate_image_features": 16}},
        {"name": "instruct", "config": f"mavis/instruct.py:size=tiny,steps={steps(320)},eval_examples=0",
         "init_from": "align", "set": {**letters, "data.version": ",".join(VERSIONS), **evaluated}},
        {"name": "puma_kl", "config": f"math_puma/kl_align.py:size=tiny,steps={steps(80)},eval_examples=0",
         "init_from": "instruct", "set": {**letters, "train.trainable": "projector", **evaluated}},
    )
    return mc.finalize(config)
