"""Benchmark evaluators (registry kind "evaluator"): build prompts per protocol, call the model in
batches, score with the official rules, yield per-category metrics and write tables to ``workdir``.

``predict_fn(state, prompts: list[str], images: list[np.ndarray | None]) -> list[str]``: one generated
response per prompt; ``images[i]`` is the item's HxWx3 uint8 picture, or None when the item has none or
the file is absent (the text-only slices; ``missing_images="error"`` makes an absent file an error
naming it and the benchmark folder's layout, as the protocol configs in ``configs/eval/`` do). ``state``
is passed through untouched (model, params, ...). No JAX here: the model lives entirely behind predict_fn.

Every generating evaluator is a :class:`ResponseEvaluator`: its spec may carry its own decoding
settings (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed`` — ``sample_seed`` for
``engine_heldout`` and ``text_math``, whose ``seed`` picks the problems — ``stop``), handed to a
predict_fn that takes them (:class:`mathvlm.train.predict.Predictor`, marked
``takes_generation_options``) together with the items' indices (the sampling keys) and the evaluator's
``batch_size``. With a workdir each writes its per-item responses next to its tables, in the
benchmark's own output format (``<name>_responses.json`` / ``.jsonl``: what ``python -m
mathvlm.evaluate score`` and the official scorers read).

Prompt variants (``prompt`` option): ``mathvista`` ``"query"`` (the official query.json prompt: hint,
question, choices; Math-LLaVA) or ``"puma"`` (Math-PUMA's hint + raw question, no choices);
``math_v`` ``"boxed"`` (ours) or ``"official"`` (MATH-V's own model scripts); ``we_math`` ``"mathvlm"``
(ours) or ``"official"`` (the knowledge-concept template Math-PUMA's script sends); ``mathverse``
picks a dataset field (``prompt_field``: ``query_cot`` or ``query_wo``).

Splitting over processes: :meth:`ResponseEvaluator.respond` with ``shard=i, num_shards=n`` generates
the batches ``i::n`` of the items (the same batches as one process makes, so the same responses), and
:meth:`ResponseEvaluator.finish` scores the merged responses (``mathvlm.evaluate`` does the merging).

The plumbing lives in :mod:`mathvlm.eval.base` and the engine evaluators in
:mod:`mathvlm.eval.engine_evaluators`; both are re-exported here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mathvlm import registry
from mathvlm.eval import (
    common,
    geoqa,
    local_extraction,
    math_v,
    mathverse,
    mathvista,
    we_math,
)
from mathvlm.eval.base import (  # noqa: F401  (re-exported: the evaluators' public plumbing)
    BenchmarkEvaluator,
    ResponseEvaluator,
    load_image,
    write_responses,
)
from mathvlm.eval.engine_evaluators import (  # noqa: F401  (registers and re-exports them)
    EngineHeldoutEvaluator,
    EngineRetrievalEvaluator,
)

# Math-PUMA's MathVista prompt (eval/inference/sub_inference_json_customvlm.py, USER_HINT): the raw
# question only; the choices are never shown (normalisation maps free text to the nearest choice).
PUMA_MATHVISTA_HINT = ("Hint: Please answer the question and provide the final answer at the end.\n"
                       "Question: {question}")


def _check_prompt(name: str, prompt: str, choices: tuple[str, ...]) -> str:
    if prompt not in choices:
        raise ValueError(f"{name}: prompt={prompt!r}; choose one of {choices}")
    return prompt


@registry.register("evaluator", "mathvista")
class MathVistaEvaluator(BenchmarkEvaluator):
    """Official query (with choices) from query.json; local extraction, then the official normalisation."""

    name = "mathvista"

    LAYOUT = ("  testmini.json     pid -> problem (lupantech/MathVista data/testmini.json)\n"
              "  query.json        pid -> official prompt (data/query.json; for prompt='query')\n"
              "  images/<pid>.jpg  each problem's 'image' (HF AI4Math/MathVista images.zip, unzipped here)")

    def __init__(self, predict_fn, *, integer_rule: str = "truncate", prompt: str = "query",
                 judge: Any = None, **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.integer_rule = integer_rule
        self.prompt = _check_prompt(self.name, prompt, ("query", "puma"))
        # Off by default: {"base_url", "model", "cache_dir", "prompt_file"} makes the extraction
        # MathVista's own (its rules, then one GPT call with the few-shot prompt); failures are counted.
        self.extractor = None
        if judge:
            from mathvlm.eval.judge import Judge, MathVistaJudgeExtractor

            judge = dict(judge)
            with open(judge.pop("prompt_file"), encoding="utf-8") as f:
                self.extractor = MathVistaJudgeExtractor(Judge(**judge), f.read())
        self._extractions: dict[str, str] = {}

    def extract(self, response: str, problem: dict) -> str:
        """The item's extraction, computed once (a judge call is not repeated for the results file)."""
        key = problem["pid"] + "\0" + response
        if key not in self._extractions:
            self._extractions[key] = (self.extractor(response, problem) if self.extractor
                                      else local_extraction.extract_for_mathvista(response, problem))
        return self._extractions[key]

    def items(self):
        problems = mathvista.load_testmini(self.data_dir)
        items = []
        for pid, p in problems.items():
            # The results file's ``query`` is the prompt the model saw, as each paper's script writes it.
            query = p["query"] if self.prompt == "query" else PUMA_MATHVISTA_HINT.format(question=p["question"])
            items.append((query, os.path.join(self.data_dir, p["image"]),
                          {**p, "pid": str(p.get("pid", pid)), "query": query}))
        return items

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(mathvista.is_correct(problem, self.extract(response, problem),
                                           integer_rule=self.integer_rule), mathvista.categories(problem))
        if not self.extractor:
            return tally, {}
        if self.extractor.failures:
            print(f"warning: {self.name}: {self.extractor.failures} judge call(s) failed and extracted '' "
                  f"(as upstream): {self.extractor.failed_pids[:5]}", file=sys.stderr)
        return tally, {"judge_calls": self.extractor.judge.calls, "judge_failures": self.extractor.failures}

    def output(self, items, responses):
        """The official results JSON: pid -> the problem with ``response``, ``extraction`` (local, or the judge's),
        ``prediction`` (normalised) and ``true_false``, as ``calculate_score.py`` leaves it."""
        results = {}
        for (_, _, problem), response in zip(items, responses):
            extraction = self.extract(response, problem)
            prediction = mathvista.normalize_extraction(
                extraction, problem["choices"], problem["question_type"], problem["answer_type"],
                problem["precision"], integer_rule=self.integer_rule)
            results[problem["pid"]] = {**problem, "response": response,
                "extraction": extraction, "prediction": prediction,
                "true_false": prediction is not None and prediction == problem["answer"]}
        return results, False


@registry.register("evaluator", "mathverse")
class MathVerseEvaluator(BenchmarkEvaluator):
    """A MathVerse JSON list (any versions); ``prompt_field`` is ``query_cot`` (MAVIS, Math-PUMA) or
    ``query_wo`` (upstream's primary no-CoT metric)."""

    name = "mathverse"
    LAYOUT = ("  testmini.json            the five visual versions (ZrrSkywalker/MathVerse; HF AI4Math/MathVerse)\n"
              "  testmini_text_only.json  the Text Only version (no images)\n"
              "  images/<image>           each record's 'image' (HF AI4Math/MathVerse images.zip, unzipped here)")

    def __init__(self, predict_fn, *, file: str = "testmini.json", prompt_field: str = "query_cot",
                 judge: Any = None, **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.file = file
        self.prompt_field = prompt_field
        # Off by default. A ``mathvlm.eval.judge.Judge`` or its kwargs (base_url, model, cache_dir) switch
        # scoring to the papers' GPT-judge protocol on the extracted answer tail.
        if isinstance(judge, dict):
            from mathvlm.eval.judge import Judge
            judge = Judge(**judge)
        self.judge = judge

    def items(self):
        path = os.path.join(self.data_dir, self.file)
        problems = mathverse.load_problems(path)
        for p in problems:
            common.require(p, (self.prompt_field,), path, p["sample_index"])
        return [(p[self.prompt_field], os.path.join(self.data_dir, "images", p["image"]) if p.get("image") else None, p)
                for p in problems]

    def score(self, items, responses):
        problems = [p for _, _, p in items]
        if self.judge is None:
            return mathverse.score_responses(problems, responses), {}
        tally = common.Tally()
        for problem, response in zip(problems, responses):
            tally.add(self.judge.consistent(problem["question"], problem["answer"], mathverse.answer_tail(response)),
                      mathverse.categories(problem))
        return tally, {"judge_calls": self.judge.calls}

    def output(self, items, responses):
        """The official list of records with ``model_answer`` (what MathVerse's extract / score scripts
        read), plus our local ``extraction`` (the answer tail) and verdict."""
        return [{**problem, "model_answer": response, "extraction": mathverse.answer_tail(response),
                 "true_false": mathverse.is_correct(problem, response)}
                for (_, _, problem), response in zip(items, responses)], False


@registry.register("evaluator", "math_v")
class MathVisionEvaluator(BenchmarkEvaluator):
    """MATH-V prompt (question, lettered options, boxed final answer); official extraction and is_equal."""

    name = "math_v"
    LAYOUT = ("  test.jsonl / testmini.jsonl  (mathllm/MATH-V data/)\n"
              "  images/<id>.jpg              each record's 'image' (MATH-V images/)")
    # MATH-V's own model scripts (models/Qwen-VL.py, GPT4V.py, merged-image variant).
    OFFICIAL_INSTRUCTION = ('Please solve the problem step by step and put your answer in one "\\boxed{}". '
                            'If it is a multiple choice question, only one letter is allowed in the '
                            '"\\boxed{}".\n')

    def __init__(self, predict_fn, *, file: str = "testmini.jsonl", prompt: str = "boxed", **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.file = file
        self.prompt_style = _check_prompt(self.name, prompt, ("boxed", "official"))

    @classmethod
    def official_prompt(cls, problem: dict) -> str:
        """Instruction, question, then ``(A) text`` lines unless the options are the bare letters
        (pictured options), exactly as MATH-V's scripts build it."""
        options = problem["options"]
        lines = ""
        if options and "".join(options) != "ABCDE":
            lines = "".join(f"({chr(ord('A') + i)}) {o}\n" for i, o in enumerate(options))
        return cls.OFFICIAL_INSTRUCTION + f"{problem['question']}\n{lines}"

    @staticmethod
    def prompt(problem: dict) -> str:
        text = problem["question"]
        if problem["options"]:
            text += "\nOptions: " + " ".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(problem["options"]))
            return text + "\nPlease answer with the option letter in \\boxed{}, e.g. \\boxed{A}."
        return text + "\nPlease put the final answer in \\boxed{}."

    def items(self):
        problems = math_v.load_problems(os.path.join(self.data_dir, self.file))
        make = self.official_prompt if self.prompt_style == "official" else self.prompt
        return [(make(p), os.path.join(self.data_dir, p["image"]), p) for p in problems.values()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(math_v.is_correct(problem, math_v.extract_answer(response)), math_v.categories(problem))
        return tally, {}

    def output(self, items, responses):
        """The official outputs jsonl: each record with ``response`` and the extracted ``model_answer``."""
        return [{**problem, "response": response, "model_answer": math_v.extract_answer(response)}
                for (_, _, problem), response in zip(items, responses)], True


@registry.register("evaluator", "geoqa")
class GeoQAEvaluator(BenchmarkEvaluator):
    """G-LLaVA's packaged prompt (asks for 'Answer: X'); the official regex scorer."""

    name = "geoqa"
    LAYOUT = ("  test_questions.jsonl, test_answers.jsonl  (pipilurj/G-LLaVA playground/data/)\n"
              "  <image>                                   each question's 'image', e.g. test/0.png (HF "
              "Luckyjhg/Geo170K images)")

    def items(self):
        problems = geoqa.load_problems(self.data_dir)
        return [(p["prompt"], os.path.join(self.data_dir, p["image"]) if p["image"] else None,
                 {**p, "question_id": qid}) for qid, p in problems.items()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(geoqa.extract_choice(response) == problem["answer"])
        return tally, {}

    def output(self, items, responses):
        """G-LLaVA's answers jsonl: ``question_id``, ``prompt`` and the response as ``text``."""
        return [{"question_id": problem["question_id"], "prompt": prompt, "text": response}
                for (prompt, _, problem), response in zip(items, responses)], True


@registry.register("evaluator", "we_math")
class WeMathEvaluator(BenchmarkEvaluator):
    """We-Math testmini; official option parsing and four-dimensional metrics."""

    name = "we_math"
    LAYOUT = ("  testmini.json                             (We-Math/We-Math data/testmini.json)\n"
              "  2steps/image/*.png, 3steps/image/*.png    each record's 'image_path' (We-Math data/)")

    def __init__(self, predict_fn, *, prompt: str = "mathvlm", **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.prompt = _check_prompt(self.name, prompt, ("mathvlm", "official"))

    def items(self):
        records = we_math.load_problems(os.path.join(self.data_dir, "testmini.json"))
        make = we_math.official_prompt if self.prompt == "official" else we_math.prompt
        return [(make(r), os.path.join(self.data_dir, r["image_path"]), r) for r in records]

    def score(self, items, responses):
        records = [{**record, "response": response} for (_, _, record), response in zip(items, responses)]
        metrics = we_math.four_dimensional_metrics(records)
        tally = common.Tally()
        for record in records:
            tally.add(we_math.parse_option(record["response"]) == record["answer"],
                      {"key": record["key"].split("_")[-1]})
        extra = {k: v for k, v in metrics.items() if k not in ("correct", "total", "accuracy")}
        return tally, extra

    def output(self, items, responses):
        """The results JSON list the official four_dimensional_metrics.py reads: records + ``response``."""
        return [{**record, "response": response} for (_, _, record), response in zip(items, responses)], False
