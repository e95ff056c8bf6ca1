"""Bad requests get a 4xx with the OpenAI error body, and the node keeps serving; plus a
schemathesis run over the server's own OpenAPI schema (no 5xx, every error in the OpenAI shape)."""

from __future__ import annotations

import openai
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.inference.openai_checks import TEST_LIMITS, assert_openai_error

GOOD = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

BAD_BODIES = {
    "missing messages": ({"model": "tiny-random"}, 400, "messages"),
    "missing model": ({"messages": GOOD["messages"]}, 400, "model"),
    "empty messages": ({**GOOD, "messages": []}, 400, "messages"),
    "messages not a list": ({**GOOD, "messages": "hi"}, 400, "messages"),
    "content wrong type": ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, None),
    "unknown role": ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    "max_tokens as string": ({**GOOD, "max_tokens": "5"}, 400, "max_tokens"),
    "temperature as string": ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    "stream not a bool": ({**GOOD, "stream": "yes"}, 400, "stream"),
    "negative max_tokens": ({**GOOD, "max_tokens": -1}, 400, "max_tokens"),
    "zero max_tokens": ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens over the cap": ({**GOOD, "max_tokens": TEST_LIMITS["max_tokens_cap"] + 1}, 400, "max_tokens"),
    "n over the cap": ({**GOOD, "n": TEST_LIMITS["max_n"] + 1}, 400, "n"),
    "temperature too high": ({**GOOD, "temperature": 2.5}, 400, "temperature"),
    "too many stops": ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    "unknown field": ({**GOOD, "best_of": 3}, 400, "best_of"),
    "stream_options without stream": ({**GOOD, "stream_options": {"include_usage": True}}, 400, None),
    "unsupported penalty": ({**GOOD, "presence_penalty": 1.0}, 400, None),
    "body is a list": ([GOOD], 400, None),
    "unknown model": ({**GOOD, "model": "gpt-4o"}, 404, "model"),
    "huge prompt": ({**GOOD, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_request_gets_openai_error_and_node_keeps_serving(tiny_node, name):
    body, status, param = BAD_BODIES[name]
    response = tiny_node.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert_openai_error(response.json())
    if param is not None:
        assert response.json()["error"]["param"] == param
    if name == "huge prompt":
        assert response.json()["error"]["code"] == "context_length_exceeded"
    if name == "unknown model":
        assert response.json()["error"]["code"] == "model_not_found"
    assert tiny_node.post("/v1/chat/completions", json=GOOD).status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "tiny-random", "messages": [', b"\xff\xfe"])
def test_invalid_json_is_a_400(tiny_node, raw):
    response = tiny_node.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert_openai_error(response.json())


LONE_SURROGATE = "a\\ud800b"  # valid JSON for a string no UTF-8 text can hold


def raw_chat(node, text: str, **headers: str):
    return node.post("/v1/chat/completions", content=text.encode(), headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("body,param", [
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "%s"}]}', "messages.0.content"),
    ('{"model": "tiny-random", "messages": [{"role": "system", "content": "ok"}, '
     '{"role": "user", "content": [{"type": "text", "text": "%s"}]}]}', "messages.1.content"),
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "hi", "name": "%s"}]}', "messages.0.name"),
    ('{"model": "tiny-%s", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "stop": ["%s"]}', "stop"),
])
def test_lone_surrogate_is_a_400_naming_the_field(tiny_node, body, param):
    response = raw_chat(tiny_node, body % LONE_SURROGATE)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_value")
    assert response.json()["error"]["param"] == param
    assert "unicode" in response.json()["error"]["message"].lower()
    assert tiny_node.post("/v1/chat/completions", json=GOOD).status_code == 200


def test_lone_surrogate_in_an_unknown_key_still_gets_an_encodable_error(tiny_node):
    body = '{"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "x%s": 1}' % LONE_SURROGATE
    response = raw_chat(tiny_node, body)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json())
    assert "unicode" in response.json()["error"]["message"].lower()


def test_body_over_the_limit_is_a_413(tiny_node):
    limit = TEST_LIMITS["max_body_bytes"]
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * (limit + 10)}]}
    declared = tiny_node.post("/v1/chat/completions", json=big)  # Content-Length says it all
    assert declared.status_code == 413, declared.text
    assert_openai_error(declared.json(), "request_too_large")
    assert str(limit) in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: chunked transfer, the size is only known while reading
        yield b'{"model": "tiny-random", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 4096 + 2):
            yield b"x" * 4096
        yield b'"}]}'

    streamed = tiny_node.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert_openai_error(streamed.json(), "request_too_large")

    just_under = {**GOOD, "messages": [{"role": "user", "content": "word " * ((limit - 200) // 5)}]}
    assert tiny_node.post("/v1/chat/completions", json=just_under).status_code == 400  # parsed: too many tokens
    with pytest.raises(openai.APIStatusError) as client_error:
        tiny_node.client().chat.completions.create(model="tiny-random", messages=big["messages"])
    assert client_error.value.status_code == 413 and client_error.value.code == "request_too_large"
    assert tiny_node.post("/v1/chat/completions", json=GOOD).status_code == 200


def test_openapi_documents_400_not_422(tiny_node):
    schema = tiny_node.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert "422" not in operation["responses"], f"{method.upper()} {path} still advertises 422"
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "404", "413"):
        assert chat[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_openai_client_raises_typed_errors(tiny_node):
    client = tiny_node.client()
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "word " * 5000}])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=GOOD["messages"])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-random", messages=GOOD["messages"], n=TEST_LIMITS["max_n"] + 1)


def test_unknown_route_and_method_are_openai_shaped(tiny_node):
    missing = tiny_node.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert_openai_error(missing.json())
    wrong_method = tiny_node.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert_openai_error(wrong_method.json())


def test_schemathesis_no_5xx_and_openai_shaped_errors(tiny_node):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(tiny_node.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/health", "/metrics"}
    strategies = [op.as_strategy(generation_mode=mode) for op in operations
                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    seen_statuses: set[int] = set()

    @settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies))
    def check(case) -> None:
        response = case.call(base_url=tiny_node.base_url, timeout=120)
        seen_statuses.add(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert_openai_error(response.json())

    check()
    assert any(status >= 400 for status in seen_statuses)  # the negative cases really were refused
    assert any(status == 200 for status in seen_statuses)
    assert tiny_node.post("/v1/chat/completions", json=GOOD).status_code == 200
