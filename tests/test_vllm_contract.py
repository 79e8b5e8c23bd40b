"""How steering travels through vLLM (extra argument, cache salt, environment), without vLLM."""

from __future__ import annotations

import importlib.util
import os

import pytest

from icv.errors import OptionError, RequestError
from icv.serving import SteeringSpec, SteeringTerm
from icv.serving.vllm import launch
from icv.serving.vllm.contract import PLUGIN_NAME, VECTORS_ENV, cache_salt, decode, encode, plugin_environment


def test_the_extra_argument_round_trips_a_steering():
    spec = SteeringSpec((SteeringTerm("positive", 0.06), SteeringTerm("formal", -0.5)), "generated")
    assert decode(encode(spec)) == spec
    for bad, error in [(3, ValueError), ("[1]", ValueError), ('{"steering": 5}', RequestError)]:
        with pytest.raises(error):
            decode(bad)


def test_cache_salts_keep_the_clients_salt_and_vllms_limit():
    assert cache_salt("ab12") == "icv-ab12"
    assert cache_salt("ab12", "tenant7") == "tenant7-icv-ab12"
    long = cache_salt("ab12", "x" * 200)
    assert len(long) <= 128 and long.startswith("icv-ab12-") and long != cache_salt("ab12", "y" * 200)


def test_the_plugin_environment_names_the_vectors_and_the_plugin_once(tmp_path):
    env = plugin_environment([tmp_path, "rel"], {"VLLM_PLUGINS": "other", "KEEP": "1"})
    assert env[VECTORS_ENV] == os.pathsep.join([str(tmp_path.resolve()), os.path.abspath("rel")])
    assert env["VLLM_PLUGINS"] == f"other,{PLUGIN_NAME}" and env["KEEP"] == "1"
    assert plugin_environment([tmp_path], env)["VLLM_PLUGINS"] == f"other,{PLUGIN_NAME}"


def test_the_launcher_needs_vectors_and_vllm(tmp_path):
    with pytest.raises(OptionError, match="needs vector files"):
        launch.command(None, [])
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(OptionError, match="make setup-vllm"):
            launch.command(None, [tmp_path])


def test_steering_fields_ask_for_what_they_describe():
    from icv.serving import parse_steering
    from icv.serving.request import steering_fields

    spec = SteeringSpec((SteeringTerm("positive", None),), "prompt")
    assert parse_steering(steering_fields(spec)) == spec
    assert steering_fields(None) == {} and parse_steering(steering_fields(None)) is None
