"""The optional judge against a stub endpoint on 127.0.0.1, and the re-scoring CLI on the fixtures."""

import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from mathvlm import evaluate
from mathvlm.eval.judge import Judge

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def stub_endpoint():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, self.headers.get("Authorization"), body))
            verdict = "1" if "[Model_answer]: 0.5" in body["messages"][0]["content"] else "0"
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"Judgement: {verdict}"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    server.shutdown()
    server.server_close()


def test_judge_over_http_caches_on_disk(stub_endpoint, tmp_path):
    url, received = stub_endpoint
    judge = Judge(url, "stub-model", str(tmp_path / "cache"), api_key="k")
    assert judge.consistent("What is 1/2?", "\\frac{1}{2}", "0.5")
    assert not judge.consistent("What is 1/2?", "\\frac{1}{2}", "0.7")
    assert judge.consistent("What is 1/2?", "\\frac{1}{2}", "0.5")  # cached: no third request
    assert len(received) == 2 and judge.calls == 2
    assert received[0][0] == "/v1/chat/completions" and received[0][1] == "Bearer k"
    assert received[0][2]["model"] == "stub-model"
    cached = [json.loads(p.read_text()) for p in (tmp_path / "cache").iterdir()]
    assert sorted(c["content"] for c in cached) == ["Judgement: 0", "Judgement: 1"]
    again = Judge(url, "stub-model", str(tmp_path / "cache"), transport=lambda *a: pytest.fail("network used"))
    assert again.consistent("What is 1/2?", "\\frac{1}{2}", "0.5")


def test_judge_with_injected_transport_reports_bad_bodies(tmp_path):
    judge = Judge("http://unused", "m", str(tmp_path), transport=lambda url, payload, headers: {"error": "quota"})
    with pytest.raises(RuntimeError, match="unexpected body"):
        judge.complete([{"role": "user", "content": "hi"}])


def last_json_line(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1]), "\n".join(out)


@pytest.mark.parametrize("benchmark, predictions, data, expected", [
    ("mathvista", "mathvista/results.json", None, (4, 5)),
    ("mathvista", "mathvista/results.json", "mathvista", (4, 5)),
    ("math_v", "math_v/predictions.jsonl", "math_v", (3, 4)),
    ("geoqa", "geoqa/predictions.jsonl", "geoqa", (2, 4)),
    ("we_math", "we_math/results.json", None, (13, 19)),
])
def test_cli_score_prints_tables_then_json(capsys, tmp_path, benchmark, predictions, data, expected):
    argv = ["score", "--benchmark", benchmark, "--predictions", os.path.join(FIXTURES, predictions),
            "--workdir", str(tmp_path)]
    if data:
        argv += ["--data", os.path.join(FIXTURES, data)]
    assert evaluate.main(argv) == 0
    result, text = last_json_line(capsys)
    assert (result["correct"], result["total"]) == expected
    assert result["accuracy"] == pytest.approx(expected[0] / expected[1])
    assert "Overall:" in text and (tmp_path / f"{benchmark}.json").exists()


def test_cli_strict_integer_rule(capsys):
    assert evaluate.main(["score", "--benchmark", "mathvista", "--integer-rule", "strict",
                          "--predictions", os.path.join(FIXTURES, "mathvista/results.json")]) == 0
    assert last_json_line(capsys)[0]["correct"] == 3


def test_cli_reports_data_errors(capsys):
    assert evaluate.main(["score", "--benchmark", "math_v", "--predictions",
                          os.path.join(FIXTURES, "math_v/predictions.jsonl")]) == 1
    assert "needs --data" in capsys.readouterr().err


def test_cli_check_data_counts(capsys):
    assert evaluate.main(["check-data", "--root", FIXTURES]) == 0
    counts = last_json_line(capsys)[0]
    assert counts["mathvista"]["testmini"] == 5 and counts["geoqa"]["test"] == 4
    assert counts["we_math"] == {"records": 19, "problems": 6, "images_present": 0}
    assert counts["math_v/test.jsonl"]["multiple_choice"] == 2
    assert counts["mathverse/testmini.json"] == {"records": 2, "Text Only": 1, "Vision Only": 1}


def test_cli_run_names_a_missing_config(capsys, tmp_path):
    assert evaluate.main(["run", "--config", str(tmp_path / "nope.py"), "--checkpoint", "k",
                          "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "nope.py" in err and "not found" in err


def test_we_math_cli_merges_fields_from_data(capsys, tmp_path):
    records = json.loads(Path(os.path.join(FIXTURES, "we_math/results.json")).read_text())
    slim = tmp_path / "slim.json"
    slim.write_text(json.dumps([{"question number": r["question number"], "response": r["response"]} for r in records]))
    assert evaluate.main(["score", "--benchmark", "we_math", "--predictions", str(slim),
                          "--data", os.path.join(FIXTURES, "we_math")]) == 0
    result = last_json_line(capsys)[0]
    assert (result["correct"], result["total"], result["problems"]) == (13, 19, 6)


def test_mathverse_evaluator_with_judge(stub_endpoint, tmp_path):
    from mathvlm import registry
    url, received = stub_endpoint
    evaluator = registry.get("evaluator", "mathverse")(
        lambda s, prompts, images: ["Answer: 0.5"] * len(prompts), data_dir=os.path.join(FIXTURES, "mathverse"),
        judge={"base_url": url, "model": "m", "cache_dir": str(tmp_path)})
    metrics = dict(evaluator.run(None))
    # The stub says consistent whenever the model answer is 0.5, so even the MC item counts as right.
    assert metrics["mathverse/accuracy"] == 1.0 and metrics["mathverse/judge_calls"] == 2
    metrics = dict(evaluator.run(None))  # second run: every verdict comes from the disk cache
    assert metrics["mathverse/judge_calls"] == 2 and len(received) == 2
