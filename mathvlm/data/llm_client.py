"""An OpenAI-compatible chat-completions client for data augmentation, and Math-LLaVA's four GPT-4V prompts.

Off by default: nothing is ever sent unless a client is built from an explicit configuration
(:func:`load_config`, the ``--client-config FILE.json`` of ``python -m mathvlm.tools.augment``). Standard
library only (``urllib.request``); images travel as base64 data URLs in the OpenAI vision message format
(``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``).

Every reply is cached on disk, one JSON file per request under ``cache_dir/<key[:2]>/<key>.json`` with
``key = sha256(model + messages + params)`` (the images are part of the messages, so a changed image is a
new request); a second identical request is answered from the cache without touching the network. Failed
requests are never cached. Config file keys (JSON object):

==============  ==========================================================================================
``base_url``    e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``; POST ``{base_url}/chat/completions``
``model``       model name sent in the request (``gpt-4-vision-preview`` in Math-LLaVA)
``api_key_env`` name of the environment variable holding the key (default ``OPENAI_API_KEY``); ``null``
                sends no ``Authorization`` header (local servers). The key itself never goes in the file.
``timeout``     seconds per request (default 60)
``cache_dir``   reply cache; relative paths are relative to the config file (default ``llm_cache``)
``params``      extra request fields, part of the cache key (default ``{"temperature": 0.0, "max_tokens": 512}``)
``retries``     retries after HTTP 429 / 5xx / connection errors, with ``retry_wait * 2**attempt`` s pauses
``workers``     concurrent requests in ``augment`` (default 4)
==============  ==========================================================================================

The prompts (:data:`PROMPTS`) follow Math-LLaVA §3.2 in our own words: *new* (AskImg,
up to N new questions about the image, answers of at most ten words or a number, few-shot demo questions),
*complex* (CompQ, a harder multi-step version), *rephrase* (RephQ, same meaning, same answer) and
*underspecify* (SimpQ, shortened so that only the image makes it answerable). :func:`parse_reply` reads a
reply back; a reply it cannot use raises :class:`MalformedReply` with the reason, never a guessed record.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import mimetypes
import os
import re
import threading
import time
import urllib.error
import urllib.request


class LLMError(RuntimeError):
    """A request that failed: HTTP error, unreachable server, or a reply that is not chat-completions JSON."""


class MalformedReply(ValueError):
    """A well-formed API reply whose text does not follow the prompt's format; ``reason`` names the defect."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass
class ClientConfig:
    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    cache_dir: str = "llm_cache"
    params: dict = dataclasses.field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 512})
    retries: int = 2
    retry_wait: float = 2.0
    workers: int = 4


def load_config(path: str) -> ClientConfig:
    """The client configuration of a JSON file; unknown or missing keys stop with the valid keys named."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--client-config {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--client-config {path}: not valid JSON at line {e.lineno} ({e.msg})") from None
    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    if not isinstance(raw, dict) or set(raw) - fields or not {"base_url", "model"} <= set(raw):
        keys = sorted(set(raw) - fields) if isinstance(raw, dict) else raw
        raise ValueError(f"--client-config {path}: needs a JSON object with base_url and model; unknown {keys}; "
                         f"valid keys: {sorted(fields)}")
    config = ClientConfig(**raw)
    if not os.path.isabs(config.cache_dir):
        config.cache_dir = os.path.join(os.path.dirname(os.path.abspath(path)), config.cache_dir)
    return config


def image_data_url(image) -> str:
    """``data:<mime>;base64,...`` of an image file path, encoded bytes (PNG assumed) or a uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        mime = mimetypes.guess_type(str(image))[0] or "image/png"
        with open(image, "rb") as f:
            data = f.read()
    elif isinstance(image, (bytes, bytearray)):
        mime, data = "image/png", bytes(image)
    else:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        mime, data = "image/png", buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def user_message(text: str, images=()) -> dict:
    """One user turn in the OpenAI vision format: the text part, then each image as a data URL."""
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
    return {"role": "user", "content": content}


def request_key(model: str, messages: list, params: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _readable(messages: list) -> list:
    """The messages with each data URL replaced by its sha256, for the cache file (kept small)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "sha256": hashlib.sha256(p["image_url"]["url"].encode()).hexdigest()}
                       if p.get("type") == "image_url" else p for p in content]
        out.append({**m, "content": content})
    return out


class ChatClient:
    """``complete(messages) -> reply text`` against ``{base_url}/chat/completions``, through the disk cache.

    ``hits`` / ``requests`` count cache answers and network requests (for tests and the CLI summary)."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.hits = self.requests = 0
        self._lock = threading.Lock()  # counters shared by augment's worker threads
        if config.api_key_env and not os.environ.get(config.api_key_env):
            raise LLMError(f"the client config names api_key_env={config.api_key_env!r} but that environment "
                           "variable is not set; export it, or set api_key_env to null for a server without keys")

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.config.cache_dir, key[:2], key + ".json")

    def cached(self, messages: list) -> str | None:
        path = self._cache_path(request_key(self.config.model, messages, self.config.params))
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)["reply"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or a damaged entry: asked again and rewritten

    def complete(self, messages: list) -> str:
        key = request_key(self.config.model, messages, self.config.params)
        reply = self.cached(messages)
        if reply is not None:
            with self._lock:
                self.hits += 1
            return reply
        reply, usage = self._post(messages)
        path = self._cache_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entry = {"key": key, "model": self.config.model, "params": self.config.params,
                 "messages": _readable(messages), "reply": reply, "usage": usage}
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, path)
        return reply

    def _post(self, messages: list) -> tuple[str, dict]:
        body = json.dumps({**self.config.params, "model": self.config.model, "messages": messages}).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.config.api_key_env]}"
        for attempt in range(self.config.retries + 1):
            with self._lock:
                self.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                error = LLMError(f"HTTP {e.code} from {self.url}: {detail}")
                retry = e.code == 429 or e.code >= 500
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                error, retry = LLMError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}"), True
            if not retry or attempt == self.config.retries:
                raise error
            time.sleep(self.config.retry_wait * 2**attempt)
        try:
            data = json.loads(raw)
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LLMError(f"{self.url} answered something that is not a chat-completions reply "
                           f"({type(e).__name__}: {e}): {raw[:200]!r}") from None
        if not isinstance(text, str):
            raise LLMError(f"{self.url}: choices[0].message.content is {type(text).__name__}, not text")
        return text, data.get("usage") or {}


# ------------------------------------------------------------------------------------------------ prompts

_FORMAT_QA = "The question is: <question>\nThe answer is: <answer>"
PROMPTS = {
    "new": (
        "You are shown an image from a {task} problem together with the question that was asked about it.\n"
        "Original question: {question}\n{demos}"
        "Write up to {num} new questions about this image. Each must be different from the original question "
        "and from each other, must be answerable from the image alone, and must have a short definite answer: "
        "a number, or at most ten words. Write every question and its answer exactly as\n" + _FORMAT_QA +
        "\nwith one blank line between pairs and nothing else."),
    "complex": (
        "You are shown an image and a question about it.\nQuestion: {question}\nAnswer: {answer}\n"
        "Write one new question about the same image that is harder than this one: answering it must take more "
        "reasoning steps (for example by asking for a quantity that first needs the original answer). Solve it "
        "yourself and give its short final answer (a number, or at most ten words). Reply exactly as\n"
        + _FORMAT_QA + "\nand nothing else."),
    "rephrase": (
        "You are shown an image and a question about it.\nQuestion: {question}\nAnswer: {answer}\n"
        "Rewrite the question in different words so that it asks exactly the same thing: the answer must stay "
        "{answer}. Keep every number, name and option of the question. Reply exactly as\n"
        "The question is: <rewritten question>\nand nothing else."),
    "underspecify": (
        "You are shown an image and a question about it.\nQuestion: {question}\nAnswer: {answer}\n"
        "Shorten the question by leaving out everything that can be seen in the image, so that the shortened "
        "question can only be answered by looking at the image. It must still ask for the same thing: the "
        "answer must stay {answer}. Reply exactly as\nThe question is: <shortened question>\nand nothing else."),
}
KINDS = tuple(PROMPTS)
_PAIR = re.compile(r"The question is\s*:?\s*(?P<q>.+?)\s+The answer is\s*:?\s*(?P<a>.+?)\s*(?=The question is|\Z)",
                   re.IGNORECASE | re.DOTALL)
_QUESTION = re.compile(r"The question is\s*:?\s*(?P<q>.+?)\s*(?=The answer is|\Z)", re.IGNORECASE | re.DOTALL)
_NUMBERISH = re.compile(r"^[-+(]?[\d.,/√π%°$ ()-]+$")


def build_prompt(kind: str, question: str, answer: str, *, task: str = "math", num: int = 5, demos=()) -> str:
    if kind not in PROMPTS:
        raise ValueError(f"augmentation kind {kind!r}; kinds: {KINDS}")
    demo_text = "".join(f"Example question {i + 1}: {d}\n" for i, d in enumerate(demos))
    if demo_text:
        demo_text = "Questions of the kind asked about such images:\n" + demo_text
    return PROMPTS[kind].format(question=question, answer=answer, task=task, num=num, demos=demo_text)


def _clean(text: str) -> str:
    return " ".join(text.strip().strip('"').split())


def _short_answer_ok(answer: str) -> bool:
    return bool(_NUMBERISH.match(answer)) or len(answer.split()) <= 10


def parse_reply(kind: str, reply: str, question: str, answer: str, num: int = 5) -> list[dict]:
    """``[{"question", "answer"}, ...]`` read from a reply; raises :class:`MalformedReply` (reason: no_question,
    no_answer, answer_too_long, unchanged, not_shorter) when the reply is unusable. *rephrase* and
    *underspecify* keep ``answer``; *new* keeps the usable pairs (at most ``num``) if at least one is usable."""
    text = str(reply).strip()
    if kind in ("new", "complex"):
        pairs = [(_clean(m["q"]), _clean(m["a"]).rstrip(".")) for m in _PAIR.finditer(text)]
        pairs = [(q, a) for q, a in pairs if q and a]
        if not pairs:
            reason = "no_answer" if _QUESTION.search(text) else "no_question"
            raise MalformedReply(reason, f"expected 'The question is: ... The answer is: ...', got {text[:160]!r}")
        usable = [(q, a) for q, a in pairs if _short_answer_ok(a) and _clean(q).lower() != _clean(question).lower()]
        if not usable:
            raise MalformedReply("answer_too_long" if any(not _short_answer_ok(a) for _, a in pairs) else "unchanged",
                                 f"no usable pair in {text[:160]!r}")
        return [{"question": q, "answer": a} for q, a in usable[: (num if kind == "new" else 1)]]
    match = _QUESTION.search(text)
    if not match or not _clean(match["q"]):
        raise MalformedReply("no_question", f"expected 'The question is: ...', got {text[:160]!r}")
    new = _clean(match["q"])
    if new.lower() == _clean(question).lower():
        raise MalformedReply("unchanged", f"the rewritten question is the original: {new[:160]!r}")
    if kind == "underspecify" and len(new) >= len(_clean(question)):
        raise MalformedReply("not_shorter", f"{len(new)} characters against {len(_clean(question))}: {new[:160]!r}")
    return [{"question": new, "answer": answer}]
