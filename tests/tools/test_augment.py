"""Math-LLaVA augmentation: the chat-completions client against a real local HTTP server (request shape,
disk cache, HTTP / JSON errors, nothing sent without configuration), reply parsing, the rule-based engine
rephrasing and underspecification (deterministic, answers kept, the dropped facts drawn in the image), and
the CLI end to end into a LLaVA-JSON dataset the readers load."""

import base64
import hashlib
import http.server
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from mathvlm.data import llm_client, readers
from mathvlm.tools import augment
from mathvlm.engine import core, wording


class _Server:
    """An OpenAI-format endpoint on a free local port; ``reply(body) -> (status, bytes)`` decides the answer."""

    def __init__(self):
        self.requests, self.reply = [], self.default_reply
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = outer.reply(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def answer(content: str) -> tuple[int, bytes]:
        return 200, json.dumps({"id": "x", "object": "chat.completion", "usage": {"total_tokens": 3},
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                             "finish_reason": "stop"}]}).encode()

    def default_reply(self, body):
        return self.answer("The question is: What is shown?")


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _client(server, tmp_path, **overrides):
    fields = {"base_url": server.url, "model": "test-vlm", "api_key_env": None, "timeout": 10,
              "cache_dir": str(tmp_path / "cache"), "retries": 0, "retry_wait": 0.0, **overrides}
    return llm_client.ChatClient(llm_client.ClientConfig(**fields))


def _png(path, colour=(200, 30, 30)):
    Image.new("RGB", (16, 12), colour).save(path)
    return str(path)


# ------------------------------------------------------------------------------------------ the client

def test_request_is_an_openai_vision_chat_completion(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    client = _client(server, tmp_path, api_key_env="TEST_LLM_KEY", params={"temperature": 0.2, "max_tokens": 64})
    image = _png(tmp_path / "a.png")
    reply = client.complete([llm_client.user_message("Describe it.", [image])])
    assert reply == "The question is: What is shown?"
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "test-vlm" and body["temperature"] == 0.2 and body["max_tokens"] == 64
    (message,) = body["messages"]
    assert message["role"] == "user"
    assert message["content"][0] == {"type": "text", "text": "Describe it."}
    url = message["content"][1]["image_url"]["url"]
    assert message["content"][1]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    with open(image, "rb") as f:
        assert base64.b64decode(url.split(",", 1)[1]) == f.read()
    # an array is sent as PNG too
    array_url = llm_client.image_data_url(np.zeros((4, 4, 3), np.uint8))
    assert base64.b64decode(array_url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_repeated_request_is_answered_from_the_disk_cache(server, tmp_path):
    client = _client(server, tmp_path)
    messages = [llm_client.user_message("Q?", [_png(tmp_path / "a.png")])]
    first = client.complete(messages)
    assert len(server.requests) == 1 and client.requests == 1
    assert client.complete(messages) == first and len(server.requests) == 1 and client.hits == 1
    # the cache is plain JSON named by sha256(model + messages + params), readable by a new client
    key = llm_client.request_key("test-vlm", messages, client.config.params)
    assert key == hashlib.sha256(json.dumps({"model": "test-vlm", "messages": messages, "params": client.config.params},
                                            sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    with open(tmp_path / "cache" / key[:2] / f"{key}.json") as f:
        entry = json.load(f)
    assert entry["reply"] == first and "base64" not in json.dumps(entry)  # images stored as their hash only
    assert _client(server, tmp_path).complete(messages) == first and len(server.requests) == 1
    # another image, model or parameter is another request
    client.complete([llm_client.user_message("Q?", [_png(tmp_path / "b.png", (0, 0, 255))])])
    _client(server, tmp_path, model="other").complete(messages)
    _client(server, tmp_path, params={"temperature": 1.0}).complete(messages)
    assert len(server.requests) == 4


def test_http_errors_and_bad_replies_raise_clear_errors_and_are_not_cached(server, tmp_path):
    messages = [llm_client.user_message("Q?")]
    server.reply = lambda body: (500, b'{"error": "overloaded"}')
    url = r"http://127\.0\.0\.1:\d+/v1/chat/completions"
    with pytest.raises(llm_client.LLMError, match=f"HTTP 500 from {url}.*overloaded"):
        _client(server, tmp_path, retries=1).complete(messages)
    assert len(server.requests) == 2  # one retry after a 5xx
    server.reply = lambda body: (400, b'{"error": "bad model"}')
    with pytest.raises(llm_client.LLMError, match="HTTP 400"):
        _client(server, tmp_path, retries=3).complete(messages)
    assert len(server.requests) == 3  # a 4xx other than 429 is not retried
    for payload in (b"<html>not json</html>", b'{"choices": []}', b'{"object": "error"}'):
        server.reply = lambda body, payload=payload: (200, payload)
        with pytest.raises(llm_client.LLMError, match="not a chat-completions reply"):
            _client(server, tmp_path).complete(messages)
    assert not (tmp_path / "cache").exists()
    server.reply = server.default_reply
    assert _client(server, tmp_path).complete(messages) == "The question is: What is shown?"


def test_unreachable_server_and_missing_key_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(llm_client.LLMError, match="NO_SUCH_KEY_VAR"):
        llm_client.ChatClient(llm_client.ClientConfig(base_url="http://127.0.0.1:9", model="m",
                                                      api_key_env="NO_SUCH_KEY_VAR"))
    client = llm_client.ChatClient(llm_client.ClientConfig(base_url="http://127.0.0.1:9", model="m", api_key_env=None,
                                                           cache_dir=str(tmp_path), retries=0, timeout=5))
    with pytest.raises(llm_client.LLMError, match="cannot reach"):
        client.complete([llm_client.user_message("Q?")])


def test_config_file_keys_are_checked_and_the_cache_is_relative_to_it(tmp_path):
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"base_url": "http://localhost:1/v1", "model": "m", "api_key_env": None}))
    config = llm_client.load_config(str(path))
    assert config.cache_dir == str(tmp_path / "llm_cache") and config.timeout == 60
    path.write_text(json.dumps({"base_url": "u", "model": "m", "api_key": "sk-secret"}))
    with pytest.raises(ValueError, match=r"unknown \['api_key'\].*valid keys.*api_key_env"):
        llm_client.load_config(str(path))


def test_replies_are_parsed_or_rejected_with_a_reason():
    parse = llm_client.parse_reply
    reply = ("The question is: How many sides does the shape have?\nThe answer is: 4\n\n"
             "The question is: What colour is the circle?\nThe answer is: red.")
    assert parse("new", reply, "What is the area?", "12") == [
        {"question": "How many sides does the shape have?", "answer": "4"},
        {"question": "What colour is the circle?", "answer": "red"}]
    assert len(parse("new", reply, "What is the area?", "12", num=1)) == 1
    assert parse("complex", "The question is: What is twice the area?\nThe answer is: 24", "What is the area?", "12") \
        == [{"question": "What is twice the area?", "answer": "24"}]
    assert parse("rephrase", "The question is: How big is the area?", "What is the area?", "12") == [
        {"question": "How big is the area?", "answer": "12"}]
    assert parse("underspecify", "The question is: Area?", "Given AB = 3 and BC = 4, what is the area?", "12") == [
        {"question": "Area?", "answer": "12"}]
    bad = [("new", "Sure! Here are some questions: 1. Why?", "no_question"),
           ("complex", "The question is: What is twice the area?", "no_answer"),
           ("new", "The question is: Why?\nThe answer is: " + "because " * 12, "answer_too_long"),
           ("rephrase", "I cannot help with that.", "no_question"),
           ("rephrase", "The question is: what is the  area?", "unchanged"),
           ("underspecify", "The question is: Could you tell me what the area of the figure is?", "not_shorter")]
    for kind, reply, reason in bad:
        with pytest.raises(llm_client.MalformedReply) as e:
            parse(kind, reply, "What is the area?", "12")
        assert e.value.reason == reason, (kind, reply)


# ------------------------------------------------------------------------------------------ the rules

def test_every_engine_question_has_paraphrase_templates():
    rng = np.random.default_rng(0)
    for index in range(400):
        question = core.make_problem(3, index)["question"]
        new = augment.rephrase_question(question, rng)
        assert new is not None and new != question and new.rstrip("?.") != question.rstrip("?."), question


def test_rule_rephrasing_is_deterministic_and_keeps_the_answer():
    items = augment.engine_items(12, seed=5, image_size=96)
    how = {"rephrase": "rules"}
    first, summary = augment.augment(items, how, seed=5)
    again, _ = augment.augment(augment.engine_items(12, seed=5, image_size=96), how, seed=5)
    other, _ = augment.augment(items, how, seed=6)
    assert summary["rephrase"] == {"made": 12, "skipped": {}, "method": "rules"}
    assert [n["question"] for _, _, n in first] == [n["question"] for _, _, n in again]
    assert [n["question"] for _, _, n in first] != [n["question"] for _, _, n in other]
    for item, kind, new in first:
        problem = item["engine"]["problem"]
        assert kind == "rephrase" and new["question"] != item["question"]
        assert new["answer"] == item["answer"] == wording.cot_text(problem)
        assert problem["question"] not in new["question"]
        for given, _ in problem["givens"]:  # the facts are all still stated
            assert given in new["question"]
    # a single index gives the same rewrite whatever else is in the batch
    alone, _ = augment.augment([augment.engine_items(12, seed=5, image_size=96)[7]], how, seed=5)
    assert alone[0][2]["question"] == first[7][2]["question"]


def test_underspecified_engine_questions_drop_what_the_image_shows():
    items = augment.engine_items(10, seed=2, image_size=96, version="mixed")
    out, summary = augment.augment(items, {"underspecify": "rules"}, seed=2)
    made = summary["underspecify"]["made"]
    assert made + sum(summary["underspecify"]["skipped"].values()) == 10 and made >= 8
    for item, _, new in out:
        problem, style = item["engine"]["problem"], item["engine"]["style"]
        assert new["answer"] == item["answer"]  # same answer (the chain of thought)
        assert new["question"] == problem["question"] and len(new["question"]) < len(item["question"])
        # the text states no given condition and no description any more; the image draws them all
        for fact in [g for g, _ in problem["givens"]] + problem["description"]:
            assert fact not in new["question"] and fact in new["dropped"]
        np.testing.assert_array_equal(new["image"], core.render(problem, "vision_dominant", style)[0])
        layers, _ = wording.version_layers(problem, "vision_dominant")
        assert {f"given:{i}" for i in range(len(problem["givens"]))} <= layers
    again, _ = augment.augment(augment.engine_items(10, seed=2, image_size=96, version="mixed"),
                               {"underspecify": "rules"}, seed=2)
    assert [n["question"] for _, _, n in again] == [n["question"] for _, _, n in out]


def test_plan_needs_a_client_for_new_and_complex_and_says_how():
    assert augment.plan(["rephrase", "underspecify"], "auto", False, engine=True) == {
        "rephrase": "rules", "underspecify": "rules"}
    assert augment.plan(["rephrase"], "auto", True, engine=False) == {"rephrase": "client"}
    for kinds, engine in ((["new"], True), (["complex"], False)):
        with pytest.raises(ValueError, match="needs a chat-completions client.*--client-config"):
            augment.plan(kinds, "auto", False, engine)
    with pytest.raises(ValueError, match="underspecify needs the engine"):
        augment.plan(["underspecify"], "auto", False, engine=False)
    with pytest.raises(ValueError, match="unknown kind 'simplify'"):
        augment.plan(["simplify"], "auto", False, engine=True)


# --------------------------------------------------------------------------------------------- the CLI

def _dataset(tmp_path):
    os.makedirs(tmp_path / "data" / "geo", exist_ok=True)
    rows = [{"id": f"r{i}", "image": f"geo/{i}.png", "conversations": [
        {"from": "human", "value": f"<image>\nWhat is the area of shape {chr(65 + i)}?"},
        {"from": "gpt", "value": str(10 + i)}]} for i in range(3)]
    rows.append({"id": "r3", "conversations": [{"from": "human", "value": "How many apples are left?"},
                                               {"from": "gpt", "value": "2"}]})
    for i in range(3):
        _png(tmp_path / "data" / "geo" / f"{i}.png", (40 * i, 0, 0))
    path = tmp_path / "data" / "train.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_cli_without_client_sends_nothing_and_refuses_client_kinds(server, tmp_path, capsys):
    data = _dataset(tmp_path)
    out = tmp_path / "out"
    assert augment.main(["--input", data, "--kinds", "rephrase", "--out", str(out), "--images", "copy"]) == 0
    assert server.requests == []
    printed = capsys.readouterr().out
    assert "| rephrase | rules | 3 | no_template: 1 |" in printed
    rows = json.loads((out / "train.json").read_text())
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3", "r0#rephrase1", "r1#rephrase1", "r2#rephrase1"]
    assert rows[4]["conversations"][1]["value"] == "10" and rows[4]["image"] == "images/geo/0.png"
    assert re.match(r"<image>\n(Find|Compute|How large is) the area of shape A", rows[4]["conversations"][0]["value"])
    records = readers.read_llava_json(str(out / "train.json"), image_root=str(out))
    assert len(records) == 7 and all(os.path.isfile(p) for r in records for p in r["images"])
    assert augment.main(["--input", data, "--kinds", "rephrase,new", "--out", str(out)]) == 1
    assert "needs a chat-completions client" in capsys.readouterr().err and server.requests == []


def test_cli_with_a_client_makes_counts_and_caches(server, tmp_path, capsys):
    def reply(body):
        prompt = body["messages"][0]["content"][0]["text"]
        if re.search(r"^(Original question|Question): .*shape B", prompt, re.MULTILINE):  # a row with useless replies
            return server.answer("As an AI model I cannot see images.")
        if "Write up to" in prompt:
            return server.answer("The question is: How many corners are there?\nThe answer is: 4\n\n"
                                 "The question is: Is the shape red?\nThe answer is: yes")
        if "harder than this one" in prompt:
            return server.answer("The question is: What is twice the area?\nThe answer is: 20")
        return server.answer("The question is: Area of this shape?")

    server.reply = reply
    config = tmp_path / "client.json"
    config.write_text(json.dumps({"base_url": server.url, "model": "test-vlm", "api_key_env": None, "retries": 0,
                                  "workers": 2}))
    data = _dataset(tmp_path)
    args = ["--input", data, "--kinds", "new,complex,rephrase,underspecify", "--client-config", str(config),
            "--out", str(tmp_path / "out"), "--no-originals"]
    assert augment.main(args) == 0
    printed = capsys.readouterr().out
    assert len(server.requests) == 4 * 3  # 3 rows with an image × 4 kinds; the text-only row is not sent
    assert "| new | client | 4 | malformed_reply:no_question: 1, no_image: 1 |" in printed
    assert "| underspecify | client | 2 | malformed_reply:no_question: 1, no_image: 1 |" in printed
    summary = json.loads((tmp_path / "out" / "augment_summary.json").read_text())
    assert summary["kinds"]["complex"]["made"] == 2 and summary["client"]["requests"] == 12
    rows = json.loads((tmp_path / "out" / "train.json").read_text())
    assert len(rows) == 4 + 2 + 2 + 2
    new = [r for r in rows if r["augment"] == "new"]
    assert new[0]["id"] == "r0#new1" and new[1]["id"] == "r0#new2" and new[1]["conversations"][1]["value"] == "yes"
    assert new[0]["image"] == os.path.join(str(tmp_path / "data"), "geo", "0.png")  # referenced, absolute
    under = [r for r in rows if r["augment"] == "underspecify"]
    assert under[0]["conversations"] == [{"from": "human", "value": "<image>\nArea of this shape?"},
                                         {"from": "gpt", "value": "10"}]
    # the few-shot demos of "new" are other questions of the same source
    prompts = [r["body"]["messages"][0]["content"][0]["text"] for r in server.requests]
    assert any("Example question 1: What is the area of shape" in p for p in prompts if "Write up to" in p)
    # a second run is answered from the cache
    assert augment.main(args + ["--out", str(tmp_path / "out2")]) == 0
    assert len(server.requests) == 12 and "0 requests, 12 cache hits" in capsys.readouterr().out
    assert (tmp_path / "out2" / "train.json").read_text() == (tmp_path / "out" / "train.json").read_text()


def test_cli_stops_when_requests_keep_failing(server, tmp_path, capsys):
    server.reply = lambda body: (503, b"down")
    config = tmp_path / "client.json"
    config.write_text(json.dumps({"base_url": server.url, "model": "m", "api_key_env": None, "retries": 0}))
    args = ["--input", _dataset(tmp_path), "--kinds", "complex", "--client-config", str(config),
            "--out", str(tmp_path / "out")]
    assert augment.main(args + ["--max-request-failures", "1"]) == 1
    assert "requests failed, more than --max-request-failures=1" in capsys.readouterr().err
    assert augment.main(args) == 0  # below the limit: each failure is a counted skip
    assert "| complex | client | 0 | no_image: 1, request_failed: 3 |" in capsys.readouterr().out


def test_cli_engine_writes_a_loadable_dataset(tmp_path, capsys):
    out = tmp_path / "engine"
    args = ["--engine", "4", "--seed", "9", "--kinds", "rephrase,underspecify", "--image-size", "96", "--out", str(out)]
    assert augment.main(args) == 0
    assert "| underspecify | rules | 4 | 0 |" in capsys.readouterr().out
    rows = json.loads((out / "train.json").read_text())
    assert len(rows) == 12 and sum(r.get("augment") == "underspecify" for r in rows) == 4
    under = next(r for r in rows if r.get("augment") == "underspecify")
    assert under["dropped_facts"] and under["image"] != rows[0]["image"]
    records = readers.read_llava_json(str(out / "train.json"), image_root=str(out))
    assert len(records) == 12 and all(os.path.isfile(p) for r in records for p in r["images"])
    first = (out / "train.json").read_text()
    assert augment.main(args + ["--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "train.json").read_text() == first.replace(str(out), str(tmp_path / "again"))


def test_augment_modules_import_no_model_code():
    import subprocess
    import sys

    code = ("import sys, mathvlm.tools.augment, mathvlm.data.llm_client; "
            "bad = [m for m in sys.modules if m.startswith(('mathvlm.models', 'mathvlm.train'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
