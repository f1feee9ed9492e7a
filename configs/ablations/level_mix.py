"""Math-LLaVA's complexity-ratio ablation where the mix can matter: fine-tuning starts from a model that
already reads its pictures, on problems whose levels differ in difficulty, every mix asked the same
held-out problems, ``seeds`` runs per mix.

    python -m mathvlm.main --config configs/demo.py --workdir runs/demo                   # the start
    python -m mathvlm.tools.sweep --config configs/ablations/level_mix.py --run                 # 6 mixes × 3 seeds
    python -m mathvlm.tools.sweep --config configs/ablations/level_mix.py:init=runs/grounding/instruct --print

The start (``init``) is the demo's instruction-tuned stage (or ``configs/experiments/grounding.py``'s): a
frozen CLIP-Math tower with calibrated features that answers ``function_shape`` problems from the picture.
The fine-tune (Math-LLaVA's: projector and LLM, letter answers, ``steps`` steps) draws ``function_shape``
and ``function`` problems in the mix's ratio over complexity levels 0:1:2:3. ``function_shape`` problems
are level 0 and the start already solves them; the ``function`` family's questions (values, zeros,
extrema, integrals read off a graph: levels 0–3 by skill) stay near chance at this size. So held-out
level 0 is where the mix can show: a mix's share of level 0 decides how much of what the start knows is
rehearsed. Math-LLaVA's five Table 8 mixes give level 0 20–40% of the rows, and ``0:1:1:1`` none. The
held-out evaluator asks ``eval_examples`` vision-dominant problems of both families (the same for every
run); :mod:`mathvlm.tools.sweep` reports accuracy per level with 95% intervals and tests each mix against
2:3:4:1.
"""

import os

from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINETUNE = os.path.join(ROOT, "configs", "math_llava", "finetune.py")
SELF = "configs/ablations/level_mix.py"
FAMILIES = ("function_shape", "function")
VERSIONS = "text_dominant,vision_intensive,vision_dominant"


def get_config(arg=None):
    arg = mc.parse_arg(arg, init="runs/demo/instruct", ratio="2:3:4:1", steps=100, eval_examples=192,
                       mixes="/".join(recipes.TABLE8_MIXES + ("0:1:1:1",)), seeds=3, workdir="")
    init = arg.init if os.path.isabs(arg.init) else os.path.join(ROOT, arg.init)
    config = mc.load(f"{FINETUNE}:size=tiny,ratio={arg.ratio},steps={arg.steps},eval_examples=0,init={init}")
    mixes = recipes.split_mixes(arg.mixes)
    with config.unlocked():
        config.name = f"ablations/level_mix (ratio {arg.ratio})"
        config.model.feature_norm = "calibrated"  # the start's statistics, loaded with its weights
        # a pool of 1,000 problems is scanned for levels at start-up (~13 ms each); level 3 has ~50 of them
        config.data.update({"families": FAMILIES, "answer": "letter", "version": VERSIONS, "seq_len": 400,
                            "length_buckets": (200, 300, 400), "num_examples": 1_000})
        config.eval.evaluators = (recipes.engine_eval(("vision_dominant",), arg.eval_examples, FAMILIES),)
        config.eval.max_new_tokens = 16
        config.sweep = ConfigDict({
            "base": f"{SELF}:init={arg.init},steps={arg.steps},eval_examples={arg.eval_examples}",
            "axis": "ratio",
            "values": mixes,
            "baseline": "2:3:4:1",
            "seeds": arg.seeds,
            "workdir": arg.workdir or "runs/ablations/level_mix",
            "overrides": (),
        })
    return mc.finalize(config)
