"""Optional GPT-style judge over an OpenAI-compatible ``/chat/completions`` endpoint (off by default).

Every response is cached on disk as JSON, keyed by a hash of (model, messages), so re-scoring never calls
the endpoint twice. ``transport`` is injectable (tests use a local stub server or a plain function); the
default uses urllib only, so the judge adds no dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

Transport = Callable[[str, dict, dict], dict]  # (url, payload, headers) -> parsed JSON response

JUDGE_PROMPT = (
    "Below are two answers to a math question. [Question] is the problem, [Standard Answer] is the correct "
    "answer, [Model_answer] is the answer extracted from a model's output. Determine whether they are "
    "consistent. Reply with only 'Judgement: 1' (consistent) or 'Judgement: 0' (inconsistent).\n\n"
    "[Question]: {question}\n[Standard Answer]: {answer}\n[Model_answer]: {prediction}\nJudgement:")


def urllib_transport(url: str, payload: dict, headers: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


class Judge:
    """``Judge(base_url, model, cache_dir).complete(messages) -> str`` and ``.consistent(q, a, p) -> bool``."""

    def __init__(self, base_url: str, model: str, cache_dir: str, *, api_key: str | None = None,
                 transport: Transport | None = None, temperature: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.cache_dir = cache_dir
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.transport = transport or urllib_transport
        self.temperature = temperature
        self.calls = 0  # endpoint calls made (cache hits excluded)
        os.makedirs(cache_dir, exist_ok=True)

    def _cache_path(self, messages: list[dict]) -> str:
        key = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature},
                         sort_keys=True, ensure_ascii=False)
        return os.path.join(self.cache_dir, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    def complete(self, messages: list[dict]) -> str:
        path = self._cache_path(messages)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)["content"]
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response: Any = self.transport(self.url, payload, headers)
        self.calls += 1
        try:
            content = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"judge endpoint {self.url} returned an unexpected body: {response!r}") from None
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:  # write-then-rename: a crash never leaves half a file
            json.dump({"messages": messages, "model": self.model, "content": content}, f, ensure_ascii=False)
        os.replace(tmp, path)
        return content

    def consistent(self, question: str, answer: str, prediction: str) -> bool:
        prompt = JUDGE_PROMPT.format(question=question, answer=answer, prediction=prediction)
        reply = self.complete([{"role": "user", "content": prompt}])
        return "judgement: 1" in reply.lower() or reply.strip() == "1"


def mathvista_extraction_prompt(demo_prompt: str, query: str, response: str) -> str:
    """The user message of MathVista's GPT extraction (``create_test_prompt`` in extract_answer.py):
    the few-shot demo, the problem's query and the response, then "Extracted answer: "."""
    return f"{demo_prompt.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


class MathVistaJudgeExtractor:
    """``extract(response, problem)`` as MathVista's ``extract_answer``: the official rules first
    (:func:`mathvlm.eval.local_extraction.official_rule_extraction`), then one judge call with the
    few-shot ``demo_prompt`` (upstream's evaluation/prompts/ext_ans.py text, supplied by the user).
    A failed call gives "" as upstream does, and is counted in ``failures`` (with its pid in
    ``failed_pids``) so that callers report it."""

    def __init__(self, judge: Judge, demo_prompt: str):
        if not demo_prompt.strip():
            raise ValueError("the MathVista extraction prompt is empty")
        self.judge = judge
        self.demo_prompt = demo_prompt
        self.failures = 0
        self.failed_pids: list[str] = []

    def __call__(self, response: str, problem: dict) -> str:
        from mathvlm.eval.local_extraction import official_rule_extraction

        rule = official_rule_extraction(response, problem)
        if rule is not None:
            return rule
        prompt = mathvista_extraction_prompt(self.demo_prompt, problem.get("query", problem.get("question", "")), response)
        try:
            return self.judge.complete([{"role": "user", "content": prompt}])
        except Exception as e:  # noqa: BLE001  (network, HTTP or body errors: counted, reported by the caller)
            self.failures += 1
            self.failed_pids.append(f"{problem.get('pid', '?')}: {type(e).__name__}: {e}"[:200])
            return ""
