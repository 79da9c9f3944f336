"""``latts serve`` for real: the server runs as its own process on 127.0.0.1 with the default model and an API
key, and the official ``openai`` client (and raw HTTP for malformed requests) talks to it, streaming too."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from conftest import SERVER_KEY

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
QUESTION = "What is 7 + 5? Answer with just the number."


@pytest.fixture(scope="module")
def server(latts_server):
    return latts_server


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key=SERVER_KEY, max_retries=0, timeout=60)


def _health(server: str) -> dict:
    with urllib.request.urlopen(server + "/health", timeout=10) as r:
        return json.loads(r.read())


def _post(server: str, body: bytes | str, path: str = "/v1/chat/completions", method: str = "POST",
          content_type: str = "application/json", key: str | None = SERVER_KEY) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(server + path, data=data, method=method, headers=headers)
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
    ("stream not a boolean", {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400),
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


def _ask(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], **extra}


def _room(server: str, branches: int = 2) -> float:
    """A budget this server (as measured at its start, on a possibly busy CPU) can serve with ``branches``."""
    h = _health(server)
    return min(30.0, max(8.0, 1.5 * (h["min_service_s"] + branches * h["min_service_per_branch_s"])))


def test_api_key_is_required_on_v1_and_health_and_page_stay_open(server) -> None:
    import openai

    for key in ("none", SERVER_KEY + "x"):
        stranger = openai.OpenAI(base_url=server + "/v1", api_key=key, max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError) as info:
            stranger.models.list()
        assert info.value.status_code == 401
        assert info.value.body["code"] == "invalid_api_key" and "--api-key" in info.value.body["message"]
    status, doc = _post(server, json.dumps(_ask(latency_budget=5)), key=None)
    assert status == 401 and doc["error"]["type"] == "invalid_request_error"
    assert _health(server)["status"] == "ok"
    with urllib.request.urlopen(server + "/", timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and "latts playground" in page and "playground.js" in page
    with urllib.request.urlopen(server + "/playground/info", timeout=10) as r:
        info_doc = json.loads(r.read())
    assert info_doc["needs_key"] is True and info_doc["model"] == MODEL and info_doc["task"] == "arith"
    status, doc = _post(server, json.dumps(_ask(latency_budget=_room(server), branches=2, max_think=16)))
    assert status == 200 and doc["object"] == "chat.completion"


def test_oversize_body_is_413_and_the_server_still_answers(server) -> None:
    big = json.dumps(_ask(padding="x" * (2 << 20)))
    status, doc = _post(server, big)
    assert status == 413 and "limit of 1048576 bytes" in doc["error"]["message"]
    # the same without a Content-Length (chunked): the limit is counted as the body arrives
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    parts = (big[i:i + 65536].encode() for i in range(0, len(big), 65536))
    conn.request("POST", "/v1/chat/completions", body=parts, encode_chunked=True,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {SERVER_KEY}"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()
    status, doc = _post(server, json.dumps(_ask(latency_budget=_room(server), branches=2, max_think=16)))
    assert status == 200, doc


def test_prompt_longer_than_the_context_is_a_400_naming_the_limit(server) -> None:
    status, doc = _post(server, json.dumps({"messages": [{"role": "user", "content": "seven plus five " * 4000}]}))
    assert status == 400, doc
    message = doc["error"]["message"]
    assert "context of 8192 tokens" in message and doc["error"]["code"] == "context_length_exceeded"


def test_stream_yields_reasoning_then_the_voted_answer_as_unstreamed(client) -> None:
    # a budget the answers never meet (L = 16 ends them first), so both runs decode the same tokens
    budget = 25.0
    ask = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "seed": 3}
    extra = {"latency_budget": budget, "branches": 2, "max_think": 16}
    t0 = time.monotonic()
    chunks = list(client.chat.completions.create(**ask, stream=True, extra_body=extra))
    wall = time.monotonic() - t0
    assert wall <= budget * 1.05
    last = chunks[-1]
    assert len(chunks) >= 3  # >= 2 before the last
    assert all(c.object == "chat.completion.chunk" and c.id == last.id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert last.choices[0].finish_reason == "stop" and all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert last.usage.prompt_tokens > 10 and last.usage.completion_tokens > 0
    latts = last.model_extra["latts"]
    assert latts["plan"]["branches"] == 2 and latts["reasoning_branch"] == 0 and latts["latency_s"] <= budget
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks)
    # branch 0's thinking arrived before the answer (its length is the sampled branch's: it may stop early)
    assert reasoning.strip()
    first_content = next((i for i, c in enumerate(chunks) if c.choices[0].delta.content), len(chunks) - 1)
    assert any(c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks[:first_content])
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == (latts["answer"] or "")
    plain = client.chat.completions.create(**ask, extra_body=extra)
    forced = latts["forced"] + plain.model_extra["latts"]["forced"]
    assert "deadline" not in forced, f"the CPU was too busy for a {budget} s budget to be free: {forced}"
    assert content == plain.choices[0].message.content
    assert latts["branch_answers"] == plain.model_extra["latts"]["branch_answers"]


def test_a_client_leaving_a_stream_frees_the_server_at_once(client, server) -> None:
    long = {"latency_budget": 25, "branches": 8, "max_think": 2048}
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                            stream=True, extra_body=long)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    t_closed = time.monotonic()
    while _health(server)["running"] and time.monotonic() - t_closed < 20:
        time.sleep(0.02)
    freed_s = time.monotonic() - t_closed
    print(f"stream closed -> server free after {freed_s:.3f} s")
    health = _health(server)
    assert health["running"] == 0
    budget = _room(server)
    t0 = time.monotonic()
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"latency_budget": budget, "branches": 2, "max_think": 32})
    wall = time.monotonic() - t0
    print(f"next request answered in {wall:.3f} s of {budget} s")
    assert r.model_extra["latts"]["latency_s"] <= budget and wall <= budget * 1.05
