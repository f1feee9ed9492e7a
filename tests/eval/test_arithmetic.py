"""The demo's held-out arithmetic evaluator: answer extraction and scoring."""

from mathvlm import registry
from mathvlm.eval.arithmetic import extract_answer


def test_extract_answer_takes_the_last_number_after_answer():
    assert extract_answer("3 * 4 = 12. Answer: 12") == "12"
    assert extract_answer("Answer: 5 ... no wait. Answer: -7") == "-7"
    assert extract_answer("12") is None


def test_scores_an_oracle_and_a_wrong_predictor():
    evaluator_class = registry.get("evaluator", "text_math")

    def oracle(state, prompts, images=None):
        # Recompute each answer from the prompt text itself.
        outs = []
        for prompt in prompts:
            a, op, b = prompt.split("What is ")[1].split("?")[0].split()
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            outs.append(f"{a} {op} {b} = {value}. Answer: {value}")
        return outs

    results = dict(evaluator_class(oracle, num_examples=30, max_operand=9).run(None))
    assert results["text_math/accuracy"] == 1.0
    wrong = dict(evaluator_class(lambda s, p, i=None: ["Answer: 1000"] * len(p), num_examples=30).run(None))
    assert wrong["text_math/accuracy"] == 0.0
    assert {"text_math/accuracy_add", "text_math/accuracy_sub", "text_math/accuracy_mul"} <= set(results)
