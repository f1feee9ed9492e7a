"""The CPU demo (README's main job): the papers' stages chained on tiny models and the built-in data
engine, then held-out accuracy per MathVerse version after each multimodal stage.

    python -m mathvlm.main --config configs/demo.py --workdir runs/demo

1. CLIP-Math (MAVIS 1): contrastive image tower on diagram captions.
2. Text math (Math-PUMA 1): the LLM learns the engine's text-only problems (our stand-in for the
   papers' math-pretrained LLMs).
3. Alignment (MAVIS 2): the projector (and LLM) learn to caption diagrams through the CLIP-Math tower.
4. Instruction tuning (MAVIS 3): problems in every MathVerse version, answered with chain of thought.
5. KL alignment (Math-PUMA 2): vision-rich members pulled towards text-rich ones.
``<workdir>/summary.md`` has the table and ``by_version.png`` the plot. ``scale=0.2`` runs every stage
at a fifth of its steps (the CI smoke run).
"""

import os

from mathvlm import config as mc

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
    arg = mc.parse_arg(arg, scale=1.0, eval_examples=32)

    def steps(n):
        return max(2, int(n * arg.scale))

    evals = f"eval_examples={arg.eval_examples}"
    config = mc.defaults()
    config.name = "demo: MAVIS + Math-PUMA stages on tiny models and the data engine"
    config.job = "chain"
    config.config_dir = HERE
    config.stages = (
        {"name": "clip_math", "config": f"mavis/clip_math.py:size=tiny,steps={steps(150)}"},
        {"name": "text_math", "config": f"math_puma/text_sft.py:size=tiny-vlm,steps={steps(150)}",
         "init_from": "clip_math"},
        {"name": "align", "config": f"mavis/align.py:size=tiny,steps={steps(150)}",
         "init_from": "text_math", "params": ""},
        {"name": "instruct", "config": f"mavis/instruct.py:size=tiny,steps={steps(200)},{evals}",
         "init_from": "align"},
        {"name": "puma_kl", "config": f"math_puma/kl_align.py:size=tiny,steps={steps(80)},{evals}",
         "init_from": "instruct"},
    )
    return mc.finalize(config)
