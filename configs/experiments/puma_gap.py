"""Toy experiment: does Math-PUMA's KL alignment close the text-rich / vision-rich gap better than plain
next-token training on the vision-rich members?

    python -m mathvlm.main --config configs/experiments/puma_gap.py --workdir runs/puma_gap

Math-PUMA's order on ``function_shape`` problems: the grounding chain's CLIP-Math and alignment stages
(``configs/experiments/grounding.py``: tower frozen, features calibrated), then ``text_sft`` — instruction
tuning on the text-only version (the drawn expression stated, no picture: stage 1's text math), which
leaves a model that answers from the text and has never had to read a picture. From it two branches, each
``steps`` steps with the same data stream, learning rate and trainable parameters (the projector: the
tower stays frozen so the calibrated statistics hold; Math-PUMA trains the tower too):

* ``puma_kl``  — Math-PUMA stage 2 on text-rich / vision-rich pairs (text-dominant / vision-dominant
  members): (1 − λ)·CE(vision-rich) + λ·KL(text-rich ‖ vision-rich);
* ``ntp_weak`` — next-token CE on the vision-rich members alone (the same questions and pictures).

After each branch the held-out evaluator asks text-dominant and vision-dominant problems; the gap
between the two is in ``<workdir>/summary.md``.

Options: ``lams=0+0.5`` adds ``puma_lam<λ>`` branches — the ``puma_kl`` branch with another λ, and
λ = 0 is its control (the same pair stream, CE on the vision-rich members only, no KL);
``seed=N`` reruns the branches on another data stream (stages named ``..._s<N>``; the shared
stages are trained once); ``mode=standard`` switches the KL branches to the token-mean KL (stages named ``..._standard``);
``temp=4`` sets the KL temperature (the release's is 1; stages ``..._T4``; in the release's mode T²
applies twice, as it did there — at 4 the target is nearly flat over the vocabulary, docs/results.md);
``noise=0.75`` gives that fraction of the vision-rich members of multiple-choice pairs a wrong letter
(the ``weak_label_noise`` row transform of :mod:`mathvlm.experiments.label_noise`; stages
``..._noise0.75``) — a control in which the text-rich target knows more than the labels, so the KL has
something to transfer; its comparison is λ = 0 (CE on the same noisy vision-rich members), and ``ntp=0``
leaves out ``ntp_weak`` (clean labels). CI runs that control at half budget (``scale=0.5,steps=300``: the
grounding chain's first two stages, then 150 branch steps) and asserts its direction
(``tests/experiments/test_puma_gap.py``).
"""

import os

from mathvlm import config as mc
from mathvlm import recipes

GROUNDING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grounding.py")
KL_ALIGN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "math_puma",
                        "kl_align.py")
FAMILIES = ("function_shape",)


def get_config(arg=None):
    arg = mc.parse_arg(arg, scale=1.0, eval_examples=128, steps=150, lams="", seed=0, mode="official",
                       noise=0.0, ntp=True, temp=1.0)
    config = mc.load(f"{GROUNDING}:scale={arg.scale},eval_examples={arg.eval_examples}")

    def scaled(n):
        return max(2, int(n * arg.scale))

    steps = scaled(arg.steps)
    evaluators = (recipes.engine_eval(("text_dominant", "vision_dominant"), arg.eval_examples,
                                      FAMILIES),)
    shared = {"data.families": FAMILIES, "data.answer": "letter", "data.seq_len": 400,
              "data.length_buckets": (200, 300, 400), "eval.evaluators": evaluators,
              "eval.max_new_tokens": 64, "model.feature_norm": "calibrated"}
    branch = {**shared, "train.trainable": "projector", "optim.lr": 1e-3, "seed": config.seed + arg.seed}
    suffix = f"_s{arg.seed}" if arg.seed else ""

    released = dict(mc.load(f"{KL_ALIGN}:size=tiny").loss.terms[0])  # λ = 0.1, α = 0.5, T = 1

    def kl_branch(name, lam):
        term = {**released, "mode": arg.mode, "lam": lam, "temperature": arg.temp}
        mode = "" if arg.mode == "official" else f"_{arg.mode}"
        temp = "" if arg.temp == released["temperature"] else f"_T{arg.temp:g}"
        noise = ({"data.row_transforms": ({"name": "weak_label_noise", "fraction": arg.noise},)}
                 if arg.noise else {})
        return {"name": name + mode + temp + (f"_noise{arg.noise:g}" if arg.noise else "") + suffix,
                "config": f"math_puma/kl_align.py:size=tiny,steps={steps},eval_examples=0",
                "init_from": "text_sft", "set": {**branch, **noise, "loss.terms": (term,)}}

    lams = [float(x) for x in str(arg.lams).split("+") if x != ""]
    clip_math, align = config.stages[:2]
    with config.unlocked():
        config.name = "experiment: Math-PUMA KL alignment vs next-token training on vision-rich members"
        config.stages = (
            clip_math, align,
            {"name": "text_sft",
             "config": f"mavis/instruct.py:size=tiny,steps={scaled(300)},eval_examples=0",
             "init_from": "align", "set": {**shared, "data.version": "text_only"}},
            kl_branch("puma_kl", released["lam"]),
            *([{"name": "ntp_weak" + suffix,
                "config": f"math_puma/instruct.py:size=tiny,steps={steps},eval_examples=0",
                "init_from": "text_sft", "set": {**branch, "data.version": "vision_dominant"}}]
              if arg.ntp else []),
            *(kl_branch(f"puma_lam{lam:g}", lam) for lam in lams),
        )
    return mc.finalize(config)
