"""How steering travels through vLLM (extra argument, cache salt, environment), without vLLM."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from icv.distribution import pip_install
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
    # Folders that exist become absolute (vLLM's workers may start elsewhere); Hub ids stay ids.
    env = plugin_environment([tmp_path, "someuser/repo"], {"VLLM_PLUGINS": "other", "KEEP": "1"})
    assert env[VECTORS_ENV] == os.pathsep.join([str(tmp_path.resolve()), "someuser/repo"])
    assert env["VLLM_PLUGINS"] == f"other,{PLUGIN_NAME}" and env["KEEP"] == "1"
    assert plugin_environment([tmp_path], env)["VLLM_PLUGINS"] == f"other,{PLUGIN_NAME}"


def test_the_launcher_needs_vectors_and_vllm(tmp_path):
    with pytest.raises(OptionError, match="needs vector files"):
        launch.command(None, [])
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(OptionError, match=re.escape(pip_install("vllm"))):
            launch.command(None, [tmp_path])


def test_steering_fields_ask_for_what_they_describe():
    from icv.serving import parse_steering
    from icv.serving.request import steering_fields

    spec = SteeringSpec((SteeringTerm("positive", None),), "prompt")
    assert parse_steering(steering_fields(spec)) == spec
    assert steering_fields(None) == {} and parse_steering(steering_fields(None)) is None


def test_icv_serve_engine_vllm_becomes_vllms_server_with_the_plugin(tmp_path, monkeypatch, capsys):
    import argparse

    from icv import cli
    from icv.serving.command import add_serve_arguments, vllm_command

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(
        [
            "--engine",
            "vllm",
            "--vectors",
            str(tmp_path),
            "--port",
            "8123",
            "--served-model-name",
            "smol",
            "--vllm-args",
            "--max-model-len 2048 -tp 2",
        ]
    )
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(OptionError, match=re.escape(pip_install("vllm"))):
            vllm_command(args)
        assert cli.main(["serve", "--engine", "vllm", "--vectors", str(tmp_path)]) == 1
        assert pip_install("vllm") in capsys.readouterr().err
        return
    argv, env = vllm_command(args)
    # vLLM's default compilation steers: nothing forces eager mode.
    assert argv[argv.index("--served-model-name") + 1] == "smol" and "--enforce-eager" not in argv
    assert argv[-4:] == ["--max-model-len", "2048", "-tp", "2"] and argv[argv.index("--port") + 1] == "8123"
    assert env[VECTORS_ENV] == str(tmp_path.resolve()) and PLUGIN_NAME in env["VLLM_PLUGINS"].split(",")
    assert env["VLLM_COMPUTE_NANS_IN_LOGITS"] == "1"  # so that a row with NaN logits ends alone


def test_the_launcher_turns_chunked_prefill_off_when_conditions_are_served(tmp_path, monkeypatch):
    from tiny import DEMOS, ByteTokenizer, tiny_model

    import icv

    monkeypatch.setattr(launch, "_check_vllm", lambda: None)
    model = tiny_model("llama")
    icv.extract(model, ByteTokenizer(), DEMOS, name="v").save(tmp_path / "v.safetensors")
    assert not launch.has_conditions([tmp_path])
    assert "--no-enable-chunked-prefill" not in launch.command(None, [tmp_path])[0]
    matching, other = [s for s, _ in DEMOS], [t for _, t in DEMOS]
    icv.extract_condition(model, ByteTokenizer(), matching, other, name="c").save(tmp_path / "c.safetensors")
    assert launch.has_conditions([tmp_path]) and launch.has_conditions([tmp_path / "c.safetensors"])
    assert "--no-enable-chunked-prefill" in launch.command(None, [tmp_path])[0]
    # the user's own choice wins (gated requests then get a 400 that says why)
    argv, _ = launch.command(None, [tmp_path], extra=["--enable-chunked-prefill"])
    assert "--no-enable-chunked-prefill" not in argv and argv[-1] == "--enable-chunked-prefill"
