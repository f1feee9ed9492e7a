"""Math-LLaVA's complexity-ratio ablation (its Table 8): the same fine-tune with data
drawn in different mixes of complexity levels 0:1:2:3 — 2:3:4:1 (the paper's choice, MathVista 38.2),
3:3:3:1 (36.0), 4:3:2:1 (36.4), 2:4:3:1 (35.1) — plus the uniform 1:1:1:1.

    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --print     # launch commands
    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --run       # one after another
    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py:mixes=2:3:4:1/1:1:1:1 --run --steps 50
    # 3 seeds per mix, split over 4 cluster jobs (job i runs --shard i/4), then one collection:
    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --seeds 3 --print
    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --seeds 3 --run --shard 1/4
    python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --seeds 3 --collect --baseline 1:1:1:1

The config is the base recipe (``configs/math_llava/finetune.py``, so ``python -m mathvlm.main`` with this
file trains the first mix) plus a ``sweep`` group that :mod:`mathvlm.tools.sweep` expands: one run per value of
``sweep.axis`` (the base recipe's arg ``ratio``) and seed, each in ``<sweep.workdir>/<name>``
(``ratio_2-3-4-1``, or ``ratio_2-3-4-1_s<k>`` with several seeds); ``--collect`` (or an unsharded ``--run``)
writes ``results.csv``, ``results_summary.csv`` (accuracy per mix with 95% intervals, and each mix against
the baseline mix: difference, interval, paired permutation p), ``results.md`` and ``results.png`` there.
Mixes are separated by ``/`` in the arg (``,`` separates args).
"""

import os

from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "13b")
# The base recipe, relative to the repository root (this file is configs/ablations/<name>.py).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = "configs/math_llava/finetune.py"


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", mixes="/".join(recipes.TABLE8_MIXES), eval_examples=48, hf="",
                       workdir="")
    mixes = recipes.split_mixes(arg.mixes)
    base_arg = f"size={arg.size}"
    if arg.size == "tiny":
        base_arg += f",eval_examples={arg.eval_examples}"
    else:
        base_arg += f",hf={arg.hf}"  # engine data drawn in each mix (a data= file has no mix to vary)
    base = f"{BASE}:{base_arg}"
    config = mc.load(os.path.join(ROOT, base) + f",ratio={mixes[0]}")
    with config.unlocked():
        config.name = f"ablations/complexity_ratio ({arg.size}; {len(mixes)} mixes)"
        config.sweep = ConfigDict({
            "base": base,              # recipe spec, relative to the repository root
            "axis": "ratio",           # the base recipe's arg the grid varies
            "values": mixes,
            "workdir": arg.workdir or f"runs/ablations/complexity_ratio_{arg.size}",
            "overrides": (),           # "key=value" strings: --config.key=value on every run
            "seeds": 1,                # runs per mix, seeds <recipe seed> + 0..seeds-1 (--seeds N)
            "baseline": "",            # the mix the others are tested against ("": the first; --baseline)
            "label": "engine",         # evaluator whose <label>_responses.jsonl is summarised (--metric)
        })
    return mc.finalize(config)
