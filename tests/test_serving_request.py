"""The steering field of a serving request: what is accepted, and the error for everything else."""

from __future__ import annotations

import json

import pytest

from icv.errors import ICVError, RequestError
from icv.serving import SteeringSpec, SteeringTerm, parse_steering


def test_no_field_null_or_empty_list_is_unsteered():
    assert parse_steering({}) is None
    assert parse_steering({"steering": None}) is None
    assert parse_steering({"steering": [], "steering_positions": "generated"}) is None


def test_a_list_of_terms_with_positions():
    spec = parse_steering(
        {
            "steering": [{"vector": "positive", "strength": 0.06}, {"vector": "formal"}],
            "steering_positions": "generated",
        }
    )
    assert spec == SteeringSpec((SteeringTerm("positive", 0.06), SteeringTerm("formal", None)), "generated")


def test_one_object_needs_no_list_and_positions_default_to_all():
    assert parse_steering({"steering": {"vector": "positive", "strength": 1}}) == SteeringSpec(
        (SteeringTerm("positive", 1.0),), "all"
    )


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"steering": "positive"}, "steering", "invalid_steering"),
        ({"steering": [["positive", 0.1]]}, "steering[0]", "invalid_steering"),
        ({"steering": [{"vector": "p", "strenght": 0.1}]}, "steering[0]", "invalid_steering"),
        ({"steering": [{"strength": 0.1}]}, "steering[0].vector", "invalid_steering"),
        ({"steering": [{"vector": 3}]}, "steering[0].vector", "invalid_steering"),
        ({"steering": [{"vector": "p", "strength": "0.1"}]}, "steering[0].strength", "invalid_strength"),
        ({"steering": [{"vector": "p", "strength": True}]}, "steering[0].strength", "invalid_strength"),
        (
            {"steering": [{"vector": "p", "strength": float("nan")}]},
            "steering[0].strength",
            "invalid_strength",
        ),
        (
            {"steering": [{"vector": "p", "strength": float("inf")}]},
            "steering[0].strength",
            "invalid_strength",
        ),
        ({"steering": [{"vector": "p", "strength": 6}]}, "steering[0].strength", "invalid_strength"),
        ({"steering": [{"vector": "p"}] * 9}, "steering", "too_many_vectors"),
        (
            {"steering": [{"vector": "p"}], "steering_positions": "last"},
            "steering_positions",
            "invalid_steering",
        ),
    ],
)
def test_bad_steering_is_a_400_naming_the_field(body, param, code):
    with pytest.raises(RequestError) as caught:
        parse_steering(body, max_strength=5.0)
    error = caught.value
    assert isinstance(error, ICVError) and error.status == 400
    assert (error.param, error.code) == (param, code)
    shape = error.to_openai()["error"]
    assert shape["type"] == "invalid_request_error" and shape["param"] == param and shape["message"]
    json.dumps(error.to_openai())  # the error body is plain JSON


def test_json_nan_and_huge_numbers_from_a_real_body_are_refused():
    for text in (
        '{"steering": [{"vector": "p", "strength": NaN}]}',
        '{"steering": [{"vector": "p", "strength": 1e999}]}',
    ):
        with pytest.raises(RequestError, match="finite"):
            parse_steering(json.loads(text))
