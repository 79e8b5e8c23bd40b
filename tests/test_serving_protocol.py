"""The request fields of the OpenAI routes: one table (`protocol.FIELDS`) that parsing, messages and docs derive from."""

from __future__ import annotations

from pathlib import Path

import pytest

from icv.errors import RequestError
from icv.serving import protocol
from icv.serving.protocol import CHAT, COMPLETIONS, FIELD, FIELDS, parse_chat, parse_completion

DOCS = Path(__file__).resolve().parent.parent / "docs" / "serving.md"
BOUNDED = [f for f in FIELDS if f.kind in ("number", "integer") and f.low is not None]
BOOLEANS = [f for f in FIELDS if f.kind == "boolean"]
UNSUPPORTED = [f for f in FIELDS if f.neutral is not None]


def parse(route: str, **fields: object) -> protocol.GenerationRequest:
    if route == CHAT:
        return parse_chat({"messages": [{"role": "user", "content": "hi"}], **fields}, max_vectors=8)
    return parse_completion({"prompt": "hi", **fields}, max_vectors=8)


def refused(route: str, **fields: object) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(route, **fields)
    assert caught.value.status == 400
    return caught.value


def test_an_empty_request_gets_every_default_of_the_table():
    params = parse(COMPLETIONS).params
    for name in ("max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos"):
        assert getattr(params, name) == FIELD[name].default, name
    request = parse(COMPLETIONS)
    assert request.stream is FIELD["stream"].default and request.include_usage is False
    assert request.steering is None and not request.max_tokens_given


@pytest.mark.parametrize("field", BOUNDED, ids=[f.name for f in BOUNDED])
def test_numbers_past_their_bounds_are_refused_naming_the_field_and_the_bounds(field):
    route = COMPLETIONS if COMPLETIONS in field.routes else CHAT
    below = field.low if field.open_low else field.low - 1
    error = refused(route, **{field.name: below})
    assert (error.param, error.code) == (field.name, "invalid_value")
    assert f"'{field.name}' must be {field.expects}, got" in str(error)
    if field.high is not None:
        assert refused(route, **{field.name: field.high + 1}).code == "invalid_value"
        assert parse(route, **{field.name: field.high}) is not None
    assert parse(route, **{field.name: field.low + (1 if field.open_low else 0)}) is not None
    wrong = refused(route, **{field.name: "1"})
    assert (wrong.param, wrong.code) == (field.name, "invalid_type")


@pytest.mark.parametrize("field", BOOLEANS, ids=[f.name for f in BOOLEANS])
def test_booleans_take_only_true_or_false(field):
    error = refused(COMPLETIONS, **{field.name: 1})
    assert (error.param, error.code) == (field.name, "invalid_type") and "true or false" in str(error)


@pytest.mark.parametrize("field", UNSUPPORTED, ids=[f.name for f in UNSUPPORTED])
def test_what_the_server_lacks_is_accepted_only_at_its_neutral_value(field):
    for route in (COMPLETIONS, CHAT):
        assert parse(route, **{field.name: field.neutral[0]}) == parse(route)
        assert parse(route, **{field.name: None}) == parse(route)
        error = refused(route, **{field.name: ["something", "else"]})
        assert (error.param, error.code) == (field.name, "unsupported_parameter")
    assert refused(COMPLETIONS, logprobs=0).code == "unsupported_parameter"  # 0 is not false here


def test_a_field_of_the_other_route_is_unknown():
    assert refused(COMPLETIONS, messages=[{"role": "user", "content": "hi"}]).code == "unknown_parameter"
    assert refused(COMPLETIONS, max_completion_tokens=3).code == "unknown_parameter"
    assert refused(CHAT, prompt="hi").code == "unknown_parameter"
    assert refused(COMPLETIONS, frobnicate=1).code == "unknown_parameter"


def test_chat_reads_max_completion_tokens_first():
    assert parse(CHAT, max_completion_tokens=3, max_tokens=9).params.max_tokens == 3
    assert parse(CHAT, max_tokens=9).params.max_tokens == 9
    assert parse(CHAT, max_completion_tokens=3).max_tokens_given
    assert refused(CHAT, max_completion_tokens=0).param == "max_completion_tokens"


def test_a_missing_prompt_or_messages_is_refused_naming_it():
    with pytest.raises(RequestError) as caught:
        parse_completion({}, max_vectors=8)
    assert caught.value.param == "prompt" and "required" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        parse_chat({}, max_vectors=8)
    assert caught.value.param == "messages"


def test_the_docs_hold_the_table_as_it_is():
    assert protocol.fields_markdown() in DOCS.read_text(encoding="utf-8")


def test_every_field_is_described_and_has_a_reader():
    for field in FIELDS:
        assert field.doc and field.routes <= {COMPLETIONS, CHAT}
        assert field.neutral is not None or field.read is not None or field.kind in protocol.PLAIN_KINDS
