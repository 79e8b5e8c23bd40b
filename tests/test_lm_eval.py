"""lm-evaluation-harness: the steered ``icv`` model (icv.harness) and the steering file of lm-eval's ``steered`` model.

Tiny random models: what is checked is that lm-eval's requests are answered by the model as
``icv.steer`` steers it (every mode, site and per-layer profile), that nothing is left on the
model, and that an exported file makes lm-eval's own ``steered`` model add what icv adds.
One test runs the local task benchmarks/lm-eval/icv_facts_mc through lm_eval.simple_evaluate.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.cli import main
from icv.errors import OptionError, VectorExistsError
from icv.lmeval_file import export_lm_eval, hookpoint_prefix

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval tests need the 'lm-eval' extra")
from lm_eval.api.instance import Instance  # noqa: E402

from icv.harness import ICVLM, parse_layers  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "benchmarks" / "lm-eval"


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    tok = char_tokenizer()
    vector = icv.extract(model, tok, DEMOS, name="tiny", progress=False)
    return model, tok, vector


def requests(pairs):
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=i)
        for i, (context, continuation) in enumerate(pairs)
    ]


PAIRS = [("the food was", " warm"), ("the food was", " cold"), ("i hated", " it")]


def reference_loglikelihood(model, tok, steering=None):
    """Sum of log-probabilities of each continuation, by a plain forward pass (steered by ``steering``)."""
    out = []
    for context, continuation in PAIRS:
        ids_context = tok(context)["input_ids"]
        ids_all = tok(context + continuation)["input_ids"]
        ids = torch.tensor([ids_all])
        with torch.no_grad():
            if steering is None:
                logits = model(ids).logits
            else:
                vector, strength, options = steering
                with icv.steer(model, vector, strength, **options):
                    logits = model(ids).logits
        logprobs = torch.log_softmax(logits[0].float(), -1)
        out.append(sum(float(logprobs[p - 1, ids_all[p]]) for p in range(len(ids_context), len(ids_all))))
    return out


def test_importing_icv_harness_registers_the_icv_model():
    code = "import icv.harness; from lm_eval.api.registry import get_model; print(get_model('icv').__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ICVLM"


@pytest.mark.parametrize(
    ("options", "layers"),
    [
        ({}, None),  # the vector's own: rotate@mlp
        ({"mode": "add", "site": "block"}, None),
        ({"mode": "rotate", "site": "attn"}, "0-1"),
        ({"mode": "add", "site": "mlp", "scale": "shift"}, "0:1;2:0.5"),
        ({"mode": "add", "site": "block", "positions": "prompt"}, "-1"),
    ],
)
def test_lm_evals_loglikelihoods_are_the_steered_models(tiny, options, layers):
    model, tok, vector = tiny
    lm = ICVLM(
        pretrained=model, tokenizer=tok, vector=vector, strength=0.5, layers=layers, batch_size=1, **options
    )
    got = [ll for ll, _greedy in lm.loglikelihood(requests(PAIRS), disable_tqdm=True)]
    steer_options = dict(options)
    if layers is not None:
        steer_options["layers"] = parse_layers(layers)
    want = reference_loglikelihood(model, tok, (vector, 0.5, steer_options))
    plain = reference_loglikelihood(model, tok)
    assert got == pytest.approx(want, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) > 1e-3  # the steering did something
    assert not icv.is_steered(model)


def test_generation_is_steered_too(tiny):
    model, tok, vector = tiny
    lm = ICVLM(pretrained=model, tokenizer=tok, vector=vector, strength=2.0, batch_size=1)
    request = Instance(
        request_type="generate_until",
        doc={},
        arguments=("the food was", {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}),
        idx=0,
    )
    (text,) = lm.generate_until([request], disable_tqdm=True)
    ids = torch.tensor([tok("the food was")["input_ids"]])
    with icv.steer(model, vector, 2.0):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert not icv.is_steered(model)


def test_the_vector_is_read_from_a_file_and_bad_options_fail_at_construction(tiny, tmp_path):
    model, tok, vector = tiny
    path = tmp_path / "v.safetensors"
    vector.save(path)
    lm = ICVLM(pretrained=model, tokenizer=tok, vector=str(path), strength=0.5, batch_size=1)
    assert torch.equal(lm.vector.directions, vector.directions)
    with pytest.raises(OptionError, match="layers="):
        ICVLM(pretrained=model, tokenizer=tok, vector=vector, layers="a-b", batch_size=1)
    with pytest.raises(OptionError):
        ICVLM(pretrained=model, tokenizer=tok, vector=vector, layers="7", batch_size=1)  # past the model
    with pytest.raises(OptionError, match="mode"):
        ICVLM(pretrained=model, tokenizer=tok, vector=vector, mode="twist", batch_size=1)
    assert not icv.is_steered(model)


def test_layers_as_lm_eval_passes_them():
    assert parse_layers("2-4;-1") == [2, 3, 4, -1]
    assert parse_layers(3) == [3]
    assert parse_layers("3:0.5;4:1") == {3: 0.5, 4: 1.0}
    assert parse_layers("") is None


def test_the_local_task_runs_offline_through_simple_evaluate(tiny, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    model, tok, vector = tiny
    lm = ICVLM(pretrained=model, tokenizer=tok, vector=vector, strength=0.5, batch_size=8)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["icv_facts_mc"],
        task_manager=TaskManager(include_path=str(RECIPE), include_defaults=False),
        limit=8,
    )["results"]["icv_facts_mc"]
    assert results["sample_len"] == 8
    assert 0.0 <= results["acc,none"] <= 1.0
    assert not icv.is_steered(model)


# -- the steering file of lm-eval's `steered` model -------------------------------------------


def test_hookpoints_are_named_under_the_base_model():
    assert hookpoint_prefix("llama", "block") == ("layers.", "")
    assert hookpoint_prefix("llama", "mlp") == ("layers.", ".mlp")
    assert hookpoint_prefix("gpt2", "attn") == ("h.", ".attn")
    assert hookpoint_prefix("opt", "mlp") == ("decoder.layers.", ".fc2")
    with pytest.raises(OptionError, match="unknown_type"):
        hookpoint_prefix("unknown_type", "block")


@pytest.mark.parametrize(("site", "layers"), [("block", None), ("mlp", {0: 1.0, 2: 0.5}), ("attn", [1])])
def test_lm_evals_steered_model_adds_what_icv_adds(tiny, tmp_path, site, layers):
    from lm_eval.models.hf_steered import SteeredModel

    model, tok, vector = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    path = tmp_path / "steer.pt"
    report = export_lm_eval(vector, path, strength=0.8, mode="add", site=site, layers=layers)
    config = torch.load(path, weights_only=False)
    assert set(config) == set(report.hookpoints)
    first = next(iter(config.values()))
    assert first["action"] == "add" and first["steering_coefficient"] == 0.8
    steered = SteeredModel(pretrained=str(folder), steer_path=str(path), device="cpu", dtype="float32")
    ids = torch.tensor([tok("the food was cold")["input_ids"]])
    got = steered._model_call(ids)
    with icv.steer(model, vector, 0.8, mode="add", site=site, layers=layers), torch.no_grad():
        want = model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, model(ids).logits, atol=1e-3)


def test_a_rotation_is_refused_with_what_to_do_instead(tiny, tmp_path):
    _, _, vector = tiny
    assert vector.metadata["injection_mode"] == "rotate"
    with pytest.raises(OptionError, match="--mode add"):
        export_lm_eval(vector, tmp_path / "x.pt")
    with pytest.raises(OptionError, match="cannot express"):
        export_lm_eval(vector, tmp_path / "x.pt", mode="rotate")
    assert not (tmp_path / "x.pt").exists()


def test_an_existing_file_is_kept_without_overwrite(tiny, tmp_path):
    _, _, vector = tiny
    path = tmp_path / "x.pt"
    path.write_text("keep")
    with pytest.raises(VectorExistsError):
        export_lm_eval(vector, path, mode="add", strength=1.0)
    assert path.read_text() == "keep"
    export_lm_eval(vector, path, mode="add", strength=1.0, overwrite=True)
    assert "layers.0.mlp" in torch.load(path, weights_only=False)


def test_icv_export_format_lm_eval(tiny, tmp_path, capsys):
    _, _, vector = tiny
    source = tmp_path / "v.safetensors"
    vector.save(source)
    out = tmp_path / "v.pt"
    args = ["export", str(source), "--format", "lm-eval", "--out", str(out), "--strength", "0.3"]
    assert main(args) == 1  # a rotating vector: refused, nothing written
    assert "--mode add" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--mode", "add", "--site", "block", "--layers", "1-2"]) == 0
    assert "lm_eval --model steered" in capsys.readouterr().out
    assert sorted(torch.load(out, weights_only=False)) == ["layers.1", "layers.2"]
    assert main(["export", str(source), "--out", str(tmp_path / "v.gguf"), "--site", "mlp"]) == 2


def test_a_model_by_folder_is_loaded_by_icv_with_hflms_device_and_dtype(tiny, tmp_path):
    model, tok, vector = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lm = ICVLM(
        pretrained=str(folder), vector=vector, strength=0.5, device="cpu", dtype="float32", batch_size=1
    )
    got = [ll for ll, _ in lm.loglikelihood(requests(PAIRS), disable_tqdm=True)]
    assert got == pytest.approx(reference_loglikelihood(model, tok, (vector, 0.5, {})), abs=1e-4)
    half = ICVLM(pretrained=str(folder), vector=vector, strength=0.5, dtype="bfloat16", batch_size=1)
    assert half.model.dtype == torch.bfloat16
    with pytest.raises(OptionError, match="dtype"):
        ICVLM(pretrained=str(folder), vector=vector, dtype="int8", batch_size=1)
