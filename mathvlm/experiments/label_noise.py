"""Label noise for Math-PUMA's KL (``configs/experiments/puma_gap.py``): the vision-rich member of a
fraction of the multiple-choice pairs is trained on a wrong option letter, so the text-rich target knows
more than the labels and the KL has something to transfer.

    config.data.row_transforms = ({"name": "weak_label_noise", "fraction": 0.75},)

A row transform (:mod:`mathvlm.data.pipeline`) over the ``engine_vlm`` source with ``data.task='pairs'``
and ``data.answer='letter'``. Which pairs, and which wrong letter, are seeded per index (the source's
engine seed), so every run and every process sees the same labels.
"""

from __future__ import annotations

import numpy as np

from mathvlm import registry
from mathvlm.data import engine_prompts


def noisy_letter(seed: int, index: int, record: dict, fraction: float) -> str:
    """The answer letter of pair ``record``, or for ``fraction`` of the indices another option's."""
    rng = np.random.default_rng([seed, index, 23])
    letter = str(record["answer_mc"]).strip().upper()
    if rng.random() >= fraction:
        return letter
    others = [c for c in "ABCD"[:len(engine_prompts.choice_list(record))] if c != letter]
    return others[rng.integers(len(others))]


@registry.register("row_transform", "weak_label_noise")
class WeakLabelNoise:
    """The wrapped pair source's rows, the vision-rich member of ``fraction`` of the multiple-choice pairs
    answering a wrong letter (the text-rich member keeps the right one)."""

    def __init__(self, source, data_config, *, seed: int, fraction: float):
        del seed  # the letters follow the source's engine seed, as its rows do
        self.fraction = float(fraction)
        task, answer = data_config.get("task", "instruct"), data_config.get("answer", "cot")
        if task != "pairs" or answer != "letter" or not 0.0 < self.fraction < 1.0:
            raise ValueError(f"row transform weak_label_noise (fraction={self.fraction}): a fraction in (0, 1), "
                             "for data.task='pairs' with data.answer='letter' (the letter is what it changes)")
        if not hasattr(source, "pair_members"):
            raise ValueError(f"row transform weak_label_noise needs the engine_vlm pair source, not "
                             f"{type(source).__name__}")
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name):  # levels, engine, ...: the wrapped source's
        if name == "source" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record, mc, sides = self.source.pair_members(index)
        if mc:
            sides["weak"]["answer_mc"] = noisy_letter(self.source.engine.seed, index, record, self.fraction)
        return self.source.pair_row(record, mc, sides)
