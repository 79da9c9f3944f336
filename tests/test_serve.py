"""``latts serve`` for real: the server runs as its own process on 127.0.0.1 with the default model, and the
official ``openai`` client (and raw HTTP for malformed requests) talks to it."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import pytest

from servers import free_port, latts_cmd, running

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
QUESTION = "What is 7 + 5? Answer with just the number."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = latts_cmd("serve", "--port", str(port), "--task", "arith", "--max-budget", "30", "--max-branches", "16",
                    "--default-budget", "6")
    with running(cmd, f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)


def _health(server: str) -> dict:
    with urllib.request.urlopen(server + "/health", timeout=10) as r:
        return json.loads(r.read())


def _post(server: str, body: bytes | str, path: str = "/v1/chat/completions", method: str = "POST",
          content_type: str = "application/json") -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(server + path, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def test_openai_client_gets_a_voted_answer_within_budget(client, server) -> None:
    budget = 8.0
    t0 = time.monotonic()
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"latency_budget": budget, "branches": 4, "max_think": 48})
    wall = time.monotonic() - t0
    assert wall <= budget * 1.05
    extra = r.model_extra["latts"]
    assert r.object == "chat.completion" and r.model == MODEL
    assert extra["plan"]["branches"] == 4 and extra["plan"]["max_think"] == 48
    assert len(extra["branch_answers"]) == 4
    # the votes count every branch that answered; the message is the winning answer
    assert sum(c for _, c in extra["votes"]) + extra["abstained"] == 4
    answered = [a for a in extra["branch_answers"] if a is not None]
    assert len(answered) == 4 - extra["abstained"]
    if extra["answer"] is not None:
        assert r.choices[0].message.content == extra["answer"]
        assert extra["votes"][0][0] == extra["answer"]
        reasoning = r.choices[0].message.model_extra["reasoning_content"]
        assert "\\boxed{" in reasoning or extra["answer"] in reasoning
    assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0
    assert extra["latency_s"] <= budget


def test_models_and_health(client, server) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = _health(server)
    assert h["status"] == "ok" and h["model"] == MODEL and h["min_service_s"] > 0


def test_unknown_model_is_404(client) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])


def test_budget_too_small_is_an_explicit_503(client, server) -> None:
    import openai

    tiny = _health(server)["min_service_s"] / 2
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"latency_budget": tiny})
    assert info.value.status_code == 503
    assert "below" in str(info.value)


def test_concurrent_requests_are_answered_in_time_or_refused_before_their_deadline(server) -> None:
    min_s = _health(server)["min_service_s"]
    budgets = [max(2.5, 1.6 * min_s), max(4.0, 2.5 * min_s), max(2.5, 1.6 * min_s), max(6.0, 3 * min_s)]

    def ask(budget: float) -> tuple[int, float, float, dict]:
        t0 = time.monotonic()
        body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "latency_budget": budget,
                "branches": 2, "max_think": 64}
        status, doc = _post(server, json.dumps(body))
        return status, time.monotonic() - t0, budget, doc

    with concurrent.futures.ThreadPoolExecutor(len(budgets)) as pool:
        results = list(pool.map(ask, budgets))
    served = [r for r in results if r[0] == 200]
    assert served, results
    for status, wall, budget, doc in results:
        assert status in (200, 503), doc
        assert wall <= budget * 1.05 + 0.1, (status, wall, budget)
        if status == 503:
            assert doc["error"]["type"] == "deadline_unservable" and doc["error"]["message"]


MALFORMED: list[tuple[str, object, int]] = [
    ("not json", b"{not json", 400),
    ("empty body", b"", 400),
    ("binary garbage", bytes(range(256)), 400),
    ("json array", [], 400),
    ("json string", "hello", 400),
    ("json null", None, 400),
    ("no messages", {"model": MODEL}, 400),
    ("empty messages", {"messages": []}, 400),
    ("messages not a list", {"messages": "hi"}, 400),
    ("message without role", {"messages": [{"content": "hi"}]}, 400),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("no user message", {"messages": [{"role": "system", "content": "be brief"}]}, 400),
    ("blank user message", {"messages": [{"role": "user", "content": "   "}]}, 400),
    ("content a number", {"messages": [{"role": "user", "content": 42}]}, 400),
    ("budget zero", {"messages": [{"role": "user", "content": "hi"}], "latency_budget": 0}, 400),
    ("budget negative", {"messages": [{"role": "user", "content": "hi"}], "latency_budget": -5}, 400),
    ("budget above max", {"messages": [{"role": "user", "content": "hi"}], "latency_budget": 3600}, 400),
    ("budget a string", {"messages": [{"role": "user", "content": "hi"}], "latency_budget": "soon"}, 400),
    ("branches zero", {"messages": [{"role": "user", "content": "hi"}], "branches": 0}, 400),
    ("branches absurd", {"messages": [{"role": "user", "content": "hi"}], "branches": 10**9}, 400),
    ("gamma negative", {"messages": [{"role": "user", "content": "hi"}], "gamma": -1}, 400),
    ("gamma absurd", {"messages": [{"role": "user", "content": "hi"}], "gamma": 1000}, 400),
    ("max_think zero", {"messages": [{"role": "user", "content": "hi"}], "max_think": 0}, 400),
    ("max_think absurd", {"messages": [{"role": "user", "content": "hi"}], "max_think": 10**7}, 400),
    ("temperature negative", {"messages": [{"role": "user", "content": "hi"}], "temperature": -0.1}, 400),
    ("top_p zero", {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400),
    ("n > 1", {"messages": [{"role": "user", "content": "hi"}], "n": 4}, 400),
    ("streaming", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400),
    ("unknown model", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404),
]


def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(server) -> None:
    assert len(MALFORMED) >= 20
    for name, body, expected in MALFORMED:
        raw = body if isinstance(body, bytes) else json.dumps(body)
        status, doc = _post(server, raw)
        assert status == expected, (name, status, doc)
        message = doc["error"]["message"]
        assert message and "Traceback" not in message, name
    assert _post(server, "{}", path="/v1/chat/completions", method="PUT")[0] == 405
    assert _post(server, "{}", path="/v1/nothing-here")[0] == 404
    assert _post(server, "{}", content_type="text/plain")[0] == 400
    # still serving
    status, doc = _post(server, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
                                            "latency_budget": 10, "branches": 2, "max_think": 32}))
    assert status == 200, doc
    assert _health(server)["status"] == "ok"
