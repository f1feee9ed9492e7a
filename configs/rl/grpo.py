"""GRPO on the data engine's exact answers: reinforcement learning with verifiable rewards after
instruction tuning (a stage none of MAVIS, Math-LLaVA or Math-PUMA has).

    python -m mathvlm.main --config configs/demo.py --workdir runs/demo                      # the start
    python -m mathvlm.main --config configs/rl/grpo.py:size=tiny,init=runs/demo/instruct --workdir runs/grpo
    python -m mathvlm.main --config configs/rl/grpo.py:size=7b,hf=DIR --workdir gs://…/grpo   # LoRA

Each step asks ``prompts`` engine problems (train split) ``group`` times each, samples the completions
from the policy (temperature ``temperature``), scores them exactly (:mod:`mathvlm.eval.rewards`:
``correct`` 1 when the final answer is right, plus ``format_weight`` for reasoning then an answer
line) and makes ``updates`` (μ) updates of the clipped GRPO objective (:mod:`mathvlm.losses.grpo`:
group-normalised advantages, ε = 0.2, k3 KL to the reference with weight ``beta``). ``curriculum=1``
starts on complexity level 0 and adds a level every quarter of the steps; ``problems=N`` draws
from the first N training problems only. ``rollouts.jsonl`` in the
workdir keeps the first rollouts of every step. ``method=sft`` is the control: the same start, data,
evaluation and schedule, trained on the engine's answers (``prompts`` rows a step).

``size=tiny``: the model, tokenizer, template, families and answer form are those of the ``init`` run
(its ``config.json``; e.g. the demo's instruct stage: letter answers, so no reasoning is asked); the
projector and LLM train; the reference is a frozen copy. ``size=7b``: a LLaVA-format folder ``hf``
(imported with ``python -m mathvlm.tools.convert import`` or exported by an earlier stage), LoRA r=64 on the
LLM, the reference is the same weights with LoRA switched off (no second copy), chain-of-thought
completions up to 512 tokens, parameters sharded over every chip.
"""

import os

from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm import recipes

SIZES = ("tiny", "7b")
METHODS = ("grpo", "sft")  # sft: the control — as many supervised steps on as many problems
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _from_run(init: str) -> ConfigDict | None:
    """The config of the run ``init`` (resolved against the repository root), or None."""
    path = init if os.path.isabs(init) else os.path.join(ROOT, init)
    try:
        return mc.load_run_config(path) if init else None
    except mc.ConfigError:
        return None


def get_config(arg=None):
    arg = mc.parse_arg(arg, size="tiny", init="", hf="", steps=0, prompts=0, group=8, updates=1,
                       temperature=1.0, beta=0.0, lr=0.0, format_weight=0.0, curriculum=0,
                       version="mixed", problems=0, eval_examples=64, method="grpo")
    recipes.check_size(arg.size, SIZES)
    if arg.method not in METHODS:
        raise mc.ConfigError(f"method={arg.method!r}; methods: {METHODS}")
    config = mc.defaults()
    config.name = f"rl/{arg.method} ({arg.size})"
    config.init.checkpoint = arg.init
    if arg.size == "tiny":
        run = _from_run(arg.init)
        config.model = run.model if run is not None else recipes.tiny_vlm()
        data = recipes.tiny_engine_data("instruct", batch_size=8, seq_len=400, template="plain",
                                        families=("function_shape",))
        if run is not None:  # ask what the start was taught, as it was taught
            data.update({k: run.data[k] for k in ("tokenizer", "template", "families", "answer",
                                                  "image_size", "render_size", "num_image_tokens",
                                                  "image_preprocess") if k in run.data})
        letters = data.get("answer", "cot") == "letter"
        prompts, steps = arg.prompts or 8, arg.steps or 60
        rl = {"prompt_len": 192, "max_new_tokens": 16 if letters else 160, "top_p": 1.0, "top_k": 0}
        config.train.trainable = "projector,decoder"
        config.optim.update({"lr": arg.lr or 1e-4, "warmup_steps": 5, "weight_decay": 0.0,
                             "schedule": "constant"})
        reference = "copy" if arg.beta else "none"
        families = tuple(data.families)
        config.eval.evaluators = (recipes.engine_eval(
            ("text_dominant", "vision_intensive", "vision_dominant", "vision_only", "text_only"),
            arg.eval_examples, families),)
        config.eval.max_new_tokens = rl["max_new_tokens"]
        config.eval.at_start = True
        config.checkpoint.every_steps = 20
    else:
        config.model = recipes.real_vlm(arg.hf)
        recipes.real_size(config)
        config.init.hf = arg.hf
        config.lora.update({"rank": 64, "alpha": 128.0, "targets": recipes.DECODER_LORA_TARGETS})
        data = recipes.real_engine_data("instruct", arg.hf, batch_size=8)
        letters = False
        prompts, steps = arg.prompts or 64, arg.steps or 1000
        rl = {"prompt_len": data.num_image_tokens + 256, "max_new_tokens": 512, "top_p": 1.0, "top_k": 0}
        config.train.trainable = "lora"
        config.optim.update({"lr": arg.lr or 1e-5, "warmup_steps": 20, "weight_decay": 0.0,
                             "schedule": "constant"})
        reference = "lora_disabled" if arg.beta else "none"
        config.checkpoint.every_steps = 50
    data.update({"version": arg.version, "batch_size": prompts * arg.group, "length_buckets": None,
                 "seq_len": rl["prompt_len"] + rl["max_new_tokens"]})
    # problems: the training pool's size (a curriculum scans it once for complexity levels)
    data.num_examples = arg.problems or (20_000 if arg.curriculum else 1_000_000)
    config.data = data
    config.train.steps = steps
    if arg.method == "sft":  # the engine's answers as targets: as many problems per step, no sampling
        data.update({"batch_size": prompts, "seq_len": 400 if letters else data.seq_len,
                     "length_buckets": (200, 300, 400) if letters else None})
        return mc.finalize(config)
    config.train.step = "grpo"
    config.train.log_every = 1
    config.train.step_options = ConfigDict({"updates": arg.updates, "temperature": arg.temperature,
                                            "reference_model": reference})
    rewards = [{"name": "correct", "weight": 1.0}]
    if arg.format_weight:
        rewards.append({"name": "format", "weight": arg.format_weight, "require_reasoning": not letters})
    quarter = max(1, steps // 4)
    config.rl = ConfigDict({
        "group_size": arg.group, "temperature": arg.temperature, "stop": (), "rewards": tuple(rewards),
        "curriculum": tuple((i * quarter, i) for i in range(4)) if arg.curriculum else (),
        "log_rollouts": 8, **rl})
    config.loss.terms = ({"name": "grpo", "weight": 1.0, "group_size": arg.group, "beta": arg.beta,
                         "epsilon_low": 0.2, "epsilon_high": 0.2, "aggregation": "token_mean"},)
    return mc.finalize(config)
