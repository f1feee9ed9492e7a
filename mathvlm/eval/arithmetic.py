"""Held-out exact-answer accuracy on the built-in text arithmetic problems (the demo's evaluation).

The model generates a worked answer for each held-out question; it is correct when the number after the
last ``Answer:`` equals the exact result. Per-operation accuracy shows which skills were learned.
"""

from __future__ import annotations

import re

from mathvlm import registry
from mathvlm.eval.evaluators import ResponseEvaluator, write_responses

_ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}


def extract_answer(text: str) -> str | None:
    """The number after the last ``Answer:``, or None."""
    found = _ANSWER.findall(text)
    return found[-1] if found else None


@registry.register("evaluator", "text_math")
class TextMathEvaluator(ResponseEvaluator):
    """``TextMathEvaluator(predict_fn, num_examples=64, seed=..., max_operand=50).run(model)``.

    ``seed`` picks the problems; decoding settings as every :class:`ResponseEvaluator` (the sampling
    seed is ``sample_seed``). With a workdir, writes ``text_math_responses.jsonl``."""

    HELDOUT_SEED_OFFSET = 10**6  # the same disjoint range as the source's "heldout" split
    name = "text_math"
    sample_seed_option = "sample_seed"

    def __init__(self, predict_fn, *, num_examples: int = 64, seed: int = 0, max_operand: int = 50,
                 batch_size: int = 16, workdir: str | None = None, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 sample_seed: int | None = None, stop=None):
        # Imported here: mathvlm.data pulls grain (and with it JAX), which the scorers in this package avoid.
        from mathvlm.data.arithmetic import make_problem

        self.setup_generation(predict_fn, batch_size=batch_size, workdir=workdir,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k, seed=sample_seed, stop=stop)
        self.problems = [make_problem(seed + self.HELDOUT_SEED_OFFSET, i, max_operand)
                         for i in range(num_examples)]

    def num_items(self) -> int:
        return len(self.problems)

    def inputs(self, indices):
        return [f"Q: {self.problems[i][0]}\nA: " for i in indices], None

    def finish(self, responses):
        per_op: dict[str, list[bool]] = {}
        rows = []
        for (question, answer), output in zip(self.problems, responses, strict=True):
            op = question.split()[3]
            correct = extract_answer(output) == extract_answer(answer)
            per_op.setdefault(op, []).append(correct)
            rows.append({"question": question, "answer": extract_answer(answer), "response": output,
                         "extraction": extract_answer(output), "correct": correct})
        if self.workdir:
            write_responses(self.workdir, self.name, rows, jsonl=True)
        hits = [h for results in per_op.values() for h in results]
        yield "text_math/accuracy", sum(hits) / len(hits)
        for op, results in sorted(per_op.items()):
            yield f"text_math/accuracy_{_OP_NAMES[op]}", sum(results) / len(results)
