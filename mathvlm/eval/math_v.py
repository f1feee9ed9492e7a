r"""MATH-Vision: data reader, prompts and the official rule-based scoring (``evaluation/evaluate.py``).

An item is correct when the model answer equals the answer letter OR the text of the correct option
under the official ``is_equal``: case-insensitive string equality, then element-wise rounding of
tuples/lists, then numeric equality of ``round(eval(str(latex2sympy(x))), 2)``. The model answer is
re-extracted from ``response`` as the official ``__main__`` does (``regen_answer=True``).

Two rules (``rule=``, CLI ``--math-v-rule``):

* ``"official"`` (default) reproduces mathllm/MATH-V ``evaluation/evaluate.py`` + ``utils.py`` at commit
  a1f5cc3 run with latex2sympy2 1.9.1, item by item on the four published output files (218, 259, 384,
  338 correct; tests/eval/test_math_v_official_parity.py). Its quirks are kept: the option text is
  compared raw, so "$120^{\circ}$", "$13 \%$" or a trailing "\$" never equal a number (latex2sympy2
  rejects them); the parser stops at the first token it cannot use, so "\frac{3\pi}{2}}{cm" is 3pi/2;
  "3\frac{1}{2}" is 3*(1/2); sympy's "E" (from "e") and unknown functions (csc) are not numbers,
  because Python ``eval`` of the printed expression only knows the ``math`` module's names. Instead of
  latex2sympy2 1.9.1 (its antlr pin conflicts with math-verify) we use ``latex2sympy2_extended`` with
  the 1.9.1 input rewrites and rejections emulated, and instead of ``eval`` a small evaluator that
  accepts only numbers, arithmetic and ``math`` names -- no code execution on model output. Measured
  against 1.9.1 on all 3,837 distinct strings those four files feed the comparison: same values and
  number types. Known residue: other inputs may still parse differently.
* ``"lenient"``: the earlier behaviour -- ``latex2sympy2_extended``'s own normalisation (degrees, units
  and ``$`` stripped), values from sympy; counts more items correct (e.g. "120" for "$120^{\circ}$").
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import os
import re
from typing import Any

from mathvlm.eval.common import DataError, Tally, read_jsonl, require

_REQUIRED = ("id", "question", "options", "answer", "level", "subject")
RULES = ("official", "lenient")


def _lenient_value(text: str) -> float | int:
    """The real value of a LaTeX expression; raises when it is not a plain number. Integers stay ``int``
    so that in tuples "1" rounds to "1", not "1.0"."""
    from latex2sympy2_extended import (
        latex2sympy,  # imported lazily: sympy's import is slow
    )

    value = latex2sympy(text)
    if getattr(value, "free_symbols", None) or not getattr(value, "is_number", False):
        raise ValueError(f"not a number: {text!r}")
    if value.is_Integer:
        return int(value)
    number = complex(value.evalf())
    if number.imag:
        raise ValueError(f"complex: {text!r}")
    return number.real


# --- the official value: latex2sympy2 1.9.1 then eval(str(expr)) in a namespace holding ``math.*`` ------

# latex2sympy2 1.9.1 rewrites its input this way before parsing.
_L2S_REWRITES = [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\mathrm{T}", "T"), ("\\mathrm{d}", "d"),
                 ("{\\rm d}", "d"), ("\\displaystyle", " "), ("\\qquad", " "), ("\\quad", " "), ("~", " "),
                 ("\\,", " "), ("$", " ")]
# What 1.9.1 rejects (lexer/parser errors: degrees, \boxed, \$, \!, \; , "?", "%" and a "\%" not glued to
# a number) or prints with a backslash, which eval rejects (\text, \mathrm, ...).
_L2S_REJECT = re.compile(r"\\circ|\\boxed|\\\$|\\!|\\;|\?|(?<!\\)%|(?<!\d)\\%|\\text|\\mathrm|\\mathit|"
                         r"\\mathbf|\\mbox|π|°")
# Python's eval gives a float for these (true division, math.sqrt, ...) even when the value is whole,
# which shows in tuples: "(\frac{4}{2},1)" becomes "(2.0,1)".
_FLOAT_RESULT = re.compile(r"\\frac|\\sqrt|/|:|\\log|\\ln|\\sin|\\cos|\\tan|\\pi|\\exp")
_MATH_NAMES = {name: value for name, value in vars(math).items() if not name.startswith("_")}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CONVERSION = None


def _cut_where_parser_stops(text: str) -> str:
    """1.9.1's grammar has no end-of-input rule: parsing stops silently at an unmatched closing bracket
    or at a '.' that does not start digits ("\\frac{4}{9}}.\\end{align*" is 4/9, "18.since" is 18)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            if depth == 0:
                return text[:i]
            depth -= 1
        elif ch == "." and not text[i + 1:i + 2].isdigit():
            return text[:i]
    return text


def _safe_eval(text: str) -> Any:
    """``eval(text)`` restricted to numbers, + - * / ** // %, and names/calls from ``math`` -- what the
    official eval can evaluate to a number from a sympy printout; anything else raises."""
    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and isinstance(right, int) and abs(right) > 10_000:
                raise ValueError("exponent too large")  # a DoS guard; eval would try
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _MATH_NAMES:
            return _MATH_NAMES[node.id]
        if isinstance(node, ast.Call) and not node.keywords and callable(function := walk(node.func)):
            return function(*[walk(arg) for arg in node.args])
        raise ValueError(f"not evaluable: {ast.dump(node)[:60]}")
    return walk(ast.parse(text.strip(), mode="eval").body)


_PLAIN_NUMBER = re.compile(r"\s*-?\d+(?:\.(\d+))?\s*")
_INT_RATIO = re.compile(r"\s*(?:(\d+)\s*:\s*(\d+)|\\frac\{(\d+)\}\{(\d+)\})\s*")
_WORD = re.compile(r"\s*[a-z]+\s*")
_FAILED = object()


def _official_value(text: str) -> Any:
    """``eval(str(latex2sympy(text)))`` as the official utils.py computes it (see the module docstring);
    raises ValueError where it fails."""
    value = _official_value_cached(text)
    if value is _FAILED:
        raise ValueError(f"not a number under the official rule: {text!r}")
    return value


@functools.lru_cache(maxsize=1 << 16)
def _official_value_cached(text: str) -> Any:
    try:
        prepared = _prepare_like_latex2sympy2(text)
        # Fast paths for the commonest shapes (the antlr parser is slow); same results as the parser.
        plain = _PLAIN_NUMBER.fullmatch(prepared)
        if plain:  # 1.9.1 reads a decimal as a rational: "12.00" is the int 12, "0.5" prints as 1/2
            return int(prepared.strip().split(".")[0]) if not (plain.group(1) or "").strip("0") else float(prepared)
        ratio = _INT_RATIO.fullmatch(prepared)
        if ratio:  # printed unevaluated as "a/b", which eval divides: a float
            numerator, denominator = (int(g) for g in ratio.groups() if g is not None)
            return numerator / denominator
        if _WORD.fullmatch(prepared):
            return _FAILED  # a product of Symbols (or E for "e"): not a name eval knows
        return _parse_and_eval(prepared, text)
    except Exception:  # noqa: BLE001  (upstream: any parse or eval error means "not equal")
        return _FAILED


def _prepare_like_latex2sympy2(text: str) -> str:
    """1.9.1's input rewrites, where its parser stops, what it rejects, and how it reads juxtaposition."""
    prepared = text
    for old, new in _L2S_REWRITES:
        prepared = prepared.replace(old, new)
    prepared = _cut_where_parser_stops(prepared)
    if _L2S_REJECT.search(prepared):
        raise ValueError(f"latex2sympy2 1.9.1 rejects {text!r}")
    prepared = re.sub(r"(\d)\s*(?=\\frac)", r"\1*", prepared)  # 1.9.1: "3\frac{1}{2}" is 3*(1/2)
    prepared = re.sub(r"(\d)\s+(?=\d)", r"\1*", prepared)  # 1.9.1: "1 010" is 1*10
    return re.sub(r"(\d),(?=\d{3}(?!\d))", r"\1", prepared)  # "700,800" is one number


def _parse_and_eval(prepared: str, text: str) -> Any:
    global _CONVERSION
    import sympy
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig

    if _CONVERSION is None:
        _CONVERSION = ConversionConfig(interpret_as_mixed_fractions=False, interpret_simple_eq_as_assignment=True,
                                       interpret_contains_as_eq=False, lowercase_symbols=False)
    expr = latex2sympy(prepared, normalization_config=None, conversion_config=_CONVERSION)
    if isinstance(expr, sympy.Basic):  # 1.9.1 reads decimals as rationals: "12.00" prints as "12"
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    value = _safe_eval(str(expr))
    if type(value) is int and _FLOAT_RESULT.search(text):
        value = float(value)
    return value


def _value_function(rule: str):
    if rule not in RULES:
        raise ValueError(f"math_v rule must be one of {RULES}, not {rule!r}")
    return _official_value if rule == "official" else _lenient_value


def _round_elements(text: str, value=_official_value) -> str:
    """``(a,b)``/``[a,b]`` with each element evaluated and rounded to 2 decimals (official eval_tuple)."""
    parts = text[1:-1].split(",")
    if len(text) < 2 or len(parts) < 2 or (text[0], text[-1]) not in (("(", ")"), ("[", "]")):
        return text
    try:
        # 'infty' and the letters a/-a stay symbolic, as upstream.
        values = [part if "infty" in part or part in ("a", "-a") else str(round(value(part), 2))
                  for part in parts]
    except Exception:  # noqa: BLE001  (upstream: any failure leaves the text as it was)
        return text
    return text[0] + ",".join(values) + text[-1]


def is_equal(answer: Any, reference: Any, rule: str = "official") -> bool:
    """The official ``is_equal`` (symmetric): see the module docstring."""
    value = _value_function(rule)
    answer, reference = str(answer).lower(), str(reference).lower()
    if not answer.replace(" ", "") or not reference.replace(" ", ""):
        return False
    if answer.strip() == reference.strip():
        return True
    answer, reference = _round_elements(answer, value), _round_elements(reference, value)
    if answer == reference:
        return True
    try:
        return round(value(reference), 2) == round(value(answer), 2)
    except Exception:  # noqa: BLE001  (upstream: anything unparsable is simply not equal)
        return False


def is_correct(problem: dict, model_answer: str, rule: str = "official") -> bool:
    """Equal to the answer letter or to the raw text of the correct option (the official rule).
    Upstream raises IndexError for a letter outside the options; here that option text is empty."""
    letter = str(problem["answer"])
    option_text = ""
    if problem["options"]:
        index = ord(letter) - ord("A") if len(letter) == 1 else -1
        option_text = problem["options"][index] if 0 <= index < len(problem["options"]) else ""
    return is_equal(letter, model_answer, rule) or is_equal(option_text, model_answer, rule)


# --- answer extraction from a free response (official evaluate.py with regen_answer) ---------------------

def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _fix_sqrt(s: str) -> str:
    pieces = s.split("\\sqrt")
    return pieces[0] + "".join("\\sqrt{" + p[0] + "}" + p[1:] if p and p[0] != "{" else "\\sqrt" + p
                               for p in pieces[1:])


def _fix_fracs(s: str) -> str:
    pieces = s.split("\\frac")
    out = pieces[0]
    for p in pieces[1:]:
        out += "\\frac"
        if p and p[0] == "{":
            out += p
        elif len(p) < 2:
            return s
        elif p[1] != "{":
            out += "{" + p[0] + "}{" + p[1] + "}" + p[2:]
        else:
            out += "{" + p[0] + "}" + p[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    if len(s.split("/")) != 2:
        return s
    a, b = s.split("/")
    try:
        if s == f"{int(a)}/{int(b)}":
            return "\\frac{" + str(int(a)) + "}{" + str(int(b)) + "}"
    except ValueError:
        pass
    return s


def _strip_string(s: str) -> str:
    for old, new in [("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
                     ("$", "")]:
        s = s.replace(old, new)
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:  # upstream only fixes fractions when a sqrt is present
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def find_math_answer(s: str) -> str:
    s = s.lower().replace("{}", "")
    boxed = re.findall(r"oxed{(.*)}", s, flags=re.DOTALL)
    ans = boxed[-1] if boxed else s
    if ans.find("}") != -1 and (ans.find("{") == -1 or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for old, new in [(" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"),
                     ("\n", ""), ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""),
                     ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""),
                     ("{units}", ""), ("units", ""), ("{km}", ""), ("km", "")]:
        ans = ans.replace(old, new)
    return _strip_string(ans)


def extract_answer(response: str) -> str:
    """The model answer the official evaluate.py derives from a free response."""
    answer = response.strip()
    for c in "ABCDE":
        if answer.endswith((f" {c}.", f" ({c}).")) or answer.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n")):
            answer = c
    if _is_number(answer.split("is ")[-1].rstrip(".")):
        answer = answer.split("is ")[-1].rstrip(".")
    if "oxed{" not in answer:
        for flag in ["the final answer is", "the answer is", "the correct answer is", "the answer should be"]:
            for variant in (flag, flag.replace("the", "The")):
                before = answer
                answer = answer.split(variant)[-1].strip()
                if variant in before:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer)
    for letter in "abcde":
        answer = answer.replace(f"({letter})", letter).replace("{" + letter + "}", letter)
    return answer.rstrip(".").lstrip(":").strip()


# --- data and files --------------------------------------------------------------------------------

def load_problems(path: str) -> dict[str, dict]:
    """test.jsonl / testmini.jsonl as id -> record."""
    problems = {}
    for index, record in enumerate(read_jsonl(path)):
        require(record, _REQUIRED, path, record.get("id", f"line {index + 1}") if isinstance(record, dict) else index)
        problems[str(record["id"])] = record
    return problems


def default_truth_file(data_dir: str) -> str:
    for name in ("test.jsonl", "testmini.jsonl"):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise DataError(f"{data_dir}: neither test.jsonl nor testmini.jsonl found")


def categories(problem: dict) -> dict[str, Any]:
    return {"subject": problem["subject"], "level": f"level{problem['level']}"}


def item_verdicts(predictions_path: str, data_dir: str, regen_answer: bool = True,
                  rule: str = "official") -> list[tuple[dict, bool]]:
    """(problem, correct) for each record of an official outputs jsonl (``id``, ``response`` and/or
    ``model_answer``), in file order, judged against data_dir's test.jsonl (or testmini.jsonl).

    Like the official ``__main__`` (``regen_answer=True``), the answer is re-extracted from ``response``;
    a record without ``response`` uses its ``model_answer``. ``regen_answer=False`` prefers
    ``model_answer``. Items of test.jsonl absent from the file are not counted (upstream neither)."""
    _value_function(rule)  # fail on a bad rule before reading anything
    truth_path = default_truth_file(data_dir)
    truth = load_problems(truth_path)
    verdicts = []
    for index, line in enumerate(read_jsonl(predictions_path)):
        require(line, ("id",), predictions_path, f"line {index + 1}")
        pid = str(line["id"])
        if pid not in truth:
            raise DataError(f"{predictions_path}: record {pid!r} is not in {truth_path}")
        if "model_answer" in line and (not regen_answer or "response" not in line):
            model_answer = line["model_answer"]
        else:
            require(line, ("response",), predictions_path, pid)
            if not isinstance(line["response"], str):
                raise DataError(f"{predictions_path}: record {pid!r} has a non-string 'response'")
            model_answer = extract_answer(line["response"])
        verdicts.append((truth[pid], is_correct(truth[pid], str(model_answer), rule)))
    return verdicts


def score_predictions(predictions_path: str, data_dir: str, regen_answer: bool = True,
                      rule: str = "official") -> Tally:
    """:func:`item_verdicts` tallied overall, by subject and by level."""
    tally = Tally()
    for problem, correct in item_verdicts(predictions_path, data_dir, regen_answer, rule):
        tally.add(correct, categories(problem))
    return tally
