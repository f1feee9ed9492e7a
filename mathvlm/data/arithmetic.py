"""Text-only arithmetic problems with worked answers (Math-PUMA stage-1 style text SFT at toy scale).

Example ``i`` of seed ``s`` is a pure function of ``(s, i)``: any process can produce any index, so the
pipeline shards and resumes by index alone.
"""

from __future__ import annotations

import numpy as np

from mathvlm import registry
from mathvlm.data.sources import RowBuilder

_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def make_problem(seed: int, index: int, max_operand: int = 50) -> tuple[str, str]:
    """(question, answer) for example ``index``: ``"What is 12 + 7?"`` → ``"12 + 7 = 19. Answer: 19"``."""
    rng = np.random.default_rng([seed, index])
    op = "+-*"[rng.integers(3)]
    a, b = (int(v) for v in rng.integers(0, max_operand + 1, size=2))
    result = _OPS[op](a, b)
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {result}. Answer: {result}"


def make_record(seed: int, index: int, max_operand: int = 50) -> dict:
    """Example ``index`` as a text-only conversation record (see :mod:`mathvlm.data.readers`)."""
    question, answer = make_problem(seed, index, max_operand)
    return {"id": f"text_math/{seed}/{index}", "images": [], "meta": {},
            "conversation": [{"role": "user", "content": f"Q: {question}\nA: "},
                             {"role": "assistant", "content": answer}]}


@registry.register("source", "text_math")
class TextMathSource:
    """grain random-access source of rows (``plain`` template unless ``data.template`` says otherwise);
    ``data.split`` ``"heldout"`` draws from a disjoint seed range."""

    def __init__(self, data_config, *, seed: int, tokenizer):
        self.seed = seed + (10**6 if data_config.get("split", "train") == "heldout" else 0)
        self.max_operand = data_config.get("max_operand", 50)
        self.size = data_config.get("num_examples", 1_000_000)
        self.build = RowBuilder(data_config, tokenizer, default_template="plain")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.build(make_record(self.seed, int(index), self.max_operand))
