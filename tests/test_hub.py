"""Vectors on the Hugging Face Hub: the folder round trip, the model card, the Hub's cache, pushing.

No test reaches the network. Hub ids are read through huggingface_hub's own cache in offline
mode, from a snapshot laid out as the library lays it out (refs/<branch> -> commit,
snapshots/<commit>/<file> -> ../../blobs/<sha256>); pushing replaces HfApi's two network calls
(create_repo, upload_folder) with recording fakes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import torch
import yaml

import icv
from icv import hub
from icv.errors import RequestError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def vec(llama, tokenizer, demos):
    made = icv.extract(llama, tokenizer, demos, name="positive", recommended_strength=0.07)
    return made.with_metadata(model_name=MODEL)


def same_bits(a: icv.InContextVector, b: icv.InContextVector) -> bool:
    """Every float bit for bit (not only ==, which equates -0.0 and 0.0), and the same metadata."""

    def bits(t):
        return None if t is None else t.contiguous().view(torch.int32)

    return (
        torch.equal(bits(a.directions), bits(b.directions))
        and torch.equal(bits(a.layer_scales), bits(b.layer_scales))
        and (a.shifts is None) == (b.shifts is None)
        and (a.shifts is None or torch.equal(bits(a.shifts), bits(b.shifts)))
        and a.metadata == b.metadata
    )


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# -- the folder ---------------------------------------------------------------------------


def test_a_folder_round_trips_bit_exactly(vec, tmp_path):
    folder = vec.save_pretrained(tmp_path / "positive", repo_id="someone/positive")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "vector.safetensors"]
    back = icv.InContextVector.from_pretrained(folder)
    assert same_bits(back, vec)
    assert same_bits(icv.InContextVector.from_pretrained(folder / "vector.safetensors"), vec)


def test_the_model_card_has_the_hubs_front_matter_and_says_what_the_vector_is(vec, tmp_path):
    folder = vec.save_pretrained(
        tmp_path / "v", repo_id="someone/positive", description="Turns reviews positive."
    )
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert front_matter(card) == {
        "library_name": "in-context-vectors",
        "tags": ["in-context-vectors", "steering-vector", "activation-steering", "icv"],
        "license": "apache-2.0",
        "base_model": MODEL,
    }
    meta = vec.metadata
    assert "Turns reviews positive." in card
    assert f"| demonstrations | {meta['num_demos']} |" in card
    assert meta["demos_sha256"] in card
    assert "Recommended strength: **0.07**" in card
    assert 'icv.InContextVector.from_pretrained("someone/positive")' in card
    assert f'icv.load_model("{MODEL}")' in card
    assert "## Evaluation\n\nNone was recorded" in card


def test_the_card_without_a_strength_names_the_default_and_takes_an_evaluation_report(vec):
    class Report:
        def markdown(self) -> str:
            return "| method | style |\n|---|---|\n| icv | 60 % |"

    metadata = {**vec.metadata, "recommended_strength": None}
    card = hub.model_card(metadata, evaluation=Report(), license="mit")
    assert "No recommended strength is stored" in card and "0.5 for this model" in card  # 1.5 / 3 layers
    assert "| icv | 60 % |" in card and front_matter(card)["license"] == "mit"


def test_a_model_name_that_is_not_a_hub_id_gives_no_base_model(vec):
    card = hub.model_card({**vec.metadata, "model_name": "/home/me/models/llama"})
    assert "base_model" not in front_matter(card)


@pytest.mark.parametrize(
    ("field", "value"),
    [("license", "Apache 2.0\nlibrary_name: x"), ("evaluation", 3), ("description", "x" * 200_000)],
)
def test_bad_card_fields_are_refused_before_anything_is_written(vec, tmp_path, field, value):
    with pytest.raises(icv.OptionError):
        vec.save_pretrained(tmp_path / "v", **{field: value})
    assert not (tmp_path / "v" / "vector.safetensors").exists()


def test_saving_over_a_folder_needs_overwrite(vec, tmp_path):
    folder = vec.save_pretrained(tmp_path / "v")
    with pytest.raises(icv.VectorExistsError):
        (vec * 2).save_pretrained(folder)
    assert icv.InContextVector.from_pretrained(folder).equal(vec)
    (vec * 2).save_pretrained(folder, overwrite=True)
    assert icv.InContextVector.from_pretrained(folder).equal(vec * 2)


def test_a_card_that_cannot_be_written_takes_its_new_vector_with_it(vec, tmp_path):
    folder = tmp_path / "v"
    (folder / "README.md").mkdir(parents=True)  # the card's name is taken by a folder
    with pytest.raises(icv.VectorFileError, match="directory"):
        vec.save_pretrained(folder, overwrite=True)
    assert not (folder / "vector.safetensors").exists()


def test_a_folder_without_a_vector_and_a_name_that_is_nothing_are_vector_file_errors(tmp_path):
    with pytest.raises(icv.VectorFileError, match="has no vector.safetensors"):
        icv.InContextVector.from_pretrained(tmp_path)
    for name in ("no-such-file.safetensors", "a/b/c", "../x/y", "-x/y"):
        with pytest.raises(icv.VectorFileError, match="no file or folder .*not a Hub id"):
            icv.InContextVector.from_pretrained(tmp_path / name if name.endswith("s") else name)


def test_hub_ids_are_told_from_paths():
    assert hub.is_hub_id("someone/sentiment-icv") and hub.is_hub_id("Org.Name/v_1.0")
    for text in ("positive.safetensors", "vecs/positive.gguf", "a/b/c", "/abs/x", "a/..", "a--b/c", "x"):
        assert not hub.is_hub_id(text), text


# -- the Hub's cache, offline ---------------------------------------------------------------


def lay_out_snapshot(
    cache: Path, repo_id: str, files: dict[str, bytes], commit: str, ref: str = "main"
) -> None:
    """What hf_hub_download leaves in its cache after fetching ``files`` of ``repo_id`` at ``ref``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()  # an LFS file's etag: its sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def offline(monkeypatch):
    # HF_HUB_OFFLINE=1 as huggingface_hub read it at import (and for any child process).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def published(vec, tmp_path) -> tuple[Path, str, str]:
    """A cache holding someone/positive at main (vec) and at the tag v2 (2 * vec)."""
    cache = tmp_path / "hub"
    first, second = "a" * 40, "b" * 40
    for vector, commit, ref in ((vec, first, "main"), (vec * 2, second, "v2")):
        folder = vector.save_pretrained(tmp_path / ref, repo_id="someone/positive")
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        lay_out_snapshot(cache, "someone/positive", files, commit, ref)
    return cache, first, second


def test_a_hub_id_is_read_from_the_hubs_cache_offline_at_any_revision(vec, tmp_path, offline):
    cache, first, second = published(vec, tmp_path)
    load = icv.InContextVector.from_pretrained
    assert load("someone/positive", cache_dir=cache).equal(vec)
    assert load("someone/positive", cache_dir=cache, revision="v2").equal(vec * 2)
    assert load("someone/positive", cache_dir=cache, revision=second).equal(vec * 2)
    assert load("someone/positive", cache_dir=cache, revision=first).equal(vec)


def test_a_hub_id_missing_from_the_cache_offline_says_so(vec, tmp_path, offline):
    cache, _, _ = published(vec, tmp_path)
    with pytest.raises(icv.VectorFileError, match="not in the Hub cache"):
        icv.InContextVector.from_pretrained("someone/other", cache_dir=cache)
    with pytest.raises(icv.VectorFileError, match="revision 'v9'"):
        icv.InContextVector.from_pretrained("someone/positive", cache_dir=cache, revision="v9")
    with pytest.raises(icv.OptionError, match="applies to Hub ids"):
        icv.InContextVector.from_pretrained(tmp_path / "main", revision="v2")


def test_a_hostile_file_in_the_cache_is_refused_as_any_vector_file(tmp_path, offline):
    cache = tmp_path / "hub"
    lay_out_snapshot(cache, "someone/evil", {"vector.safetensors": b"\xff" * 64}, "c" * 40)
    with pytest.raises(icv.VectorFileError):
        icv.InContextVector.from_pretrained("someone/evil", cache_dir=cache)


def test_icv_pull_and_inspect_read_a_hub_id_in_a_fresh_offline_process(vec, tmp_path):
    cache, _, _ = published(vec, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "pulled.safetensors"
    pulled = subprocess.run(
        [sys.executable, "-m", "icv", "pull", "someone/positive", "--revision", "v2", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert icv.InContextVector.load(out).equal(vec * 2)
    shown = subprocess.run(
        [sys.executable, "-m", "icv", "inspect", "someone/positive", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"positive"' in shown.stdout


# -- pushing ----------------------------------------------------------------------------------


class RecordingHub:
    """HfApi's network calls, recorded: what would have been sent, and a commit to answer with."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail = fail
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.fail:
            raise self.fail
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/{'d' * 40}"
        return huggingface_hub.CommitInfo(
            commit_url=url, commit_message=kwargs["commit_message"], commit_description="", oid="d" * 40
        )


def test_push_to_hub_creates_the_repo_and_uploads_the_folder_save_pretrained_writes(
    vec, tmp_path, monkeypatch
):
    fake = RecordingHub(monkeypatch)
    url = vec.push_to_hub("someone/positive", private=True, description="Positive reviews.")
    assert url == f"https://huggingface.co/someone/positive/commit/{'d' * 40}"
    (name, create), (_, upload) = fake.calls
    assert name == "create_repo" and create["private"] is True and create["exist_ok"] is True
    assert (
        upload["repo_id"] == "someone/positive"
        and upload["commit_message"] == "Upload in-context vector positive"
    )
    assert sorted(fake.uploaded) == ["README.md", "vector.safetensors"]
    card = vec.save_pretrained(tmp_path / "v", repo_id="someone/positive", description="Positive reviews.")
    assert fake.uploaded["README.md"] == (card / "README.md").read_bytes()
    (tmp_path / "sent.safetensors").write_bytes(fake.uploaded["vector.safetensors"])
    assert same_bits(icv.InContextVector.load(tmp_path / "sent.safetensors"), vec)
    assert not Path(upload["folder_path"]).exists()  # the staging folder is gone


def test_push_to_hub_refuses_a_bad_repo_id_before_any_call_and_reports_the_hubs_refusal(vec, monkeypatch):
    refusal = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    fake = RecordingHub(
        monkeypatch,
        fail=huggingface_hub.errors.HfHubHTTPError("401 Unauthorized: invalid token", response=refusal),
    )
    with pytest.raises(icv.OptionError, match="owner/name"):
        vec.push_to_hub("not a repo")
    assert fake.calls == []
    with pytest.raises(icv.VectorFileError, match="401 Unauthorized"):
        vec.push_to_hub("someone/positive")


# -- serving ---------------------------------------------------------------------------------


def test_a_server_loads_hub_ids_and_pretrained_folders_under_their_repository_names(
    vec, llama, tmp_path, offline, monkeypatch
):
    from icv.serving import ModelShape, VectorLibrary
    from icv.serving.vllm.contract import VECTORS_ENV, plugin_environment

    cache, _, _ = published(vec, tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    shape = dataclasses.replace(ModelShape.of(llama), model_name=MODEL)
    folder = (vec * 3).save_pretrained(tmp_path / "formal")
    library = VectorLibrary.load(["someone/positive", folder], shape)
    assert library.names == ["formal", "positive"]
    assert same_bits(library.get("positive").vector, vec)
    assert same_bits(library.get("formal").vector, vec * 3)
    # vLLM's workers get the same names: Hub ids travel as they are, paths become absolute.
    env = plugin_environment(["someone/positive", folder], {})
    assert env[VECTORS_ENV].split(os.pathsep) == ["someone/positive", str(folder.resolve())]
    with pytest.raises(icv.VectorFileError, match="not a Hub id"):
        VectorLibrary.load([tmp_path / "missing"], shape)


def test_icv_push_uploads_any_vector_it_can_read_and_prints_the_commit(vec, tmp_path, monkeypatch, capsys):
    from icv.cli import main

    fake = RecordingHub(monkeypatch)
    vec.save(tmp_path / "positive.safetensors")
    code = main(["push", str(tmp_path / "positive.safetensors"), "someone/positive", "--private", "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/someone/positive/commit/{'d' * 40}"
    assert fake.calls[0][1]["private"] is True
    (tmp_path / "sent.safetensors").write_bytes(fake.uploaded["vector.safetensors"])
    assert same_bits(icv.InContextVector.load(tmp_path / "sent.safetensors"), vec)


def test_icv_pull_refuses_what_is_not_a_hub_id_and_an_existing_out(vec, tmp_path, offline, capsys):
    from icv.cli import main

    cache, _, _ = published(vec, tmp_path)
    assert main(["pull", "positive.safetensors"]) == 2
    (tmp_path / "taken.safetensors").write_bytes(b"mine")
    args = [
        "pull",
        "someone/positive",
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "taken.safetensors"),
    ]
    assert main(args) == 1 and "exists" in capsys.readouterr().err
    assert (tmp_path / "taken.safetensors").read_bytes() == b"mine"
    assert main([*args, "--force"]) == 0
    assert same_bits(icv.InContextVector.load(tmp_path / "taken.safetensors"), vec)


# -- conditions ------------------------------------------------------------------------------


def hand_made_condition():
    directions = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    return icv.Condition(
        directions,
        dict(
            name="toxic", model_name="tiny-llama", model_type="llama", layer=1, threshold=0.25, comparison=">"
        ),
    )


def test_a_condition_folder_round_trips_and_each_kind_refuses_the_others_folder(vec, tmp_path):
    cond = hand_made_condition()
    folder = cond.save_pretrained(tmp_path / "c", repo_id="someone/toxic", description="Rude prompts.")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "condition.safetensors"]
    back = icv.Condition.from_pretrained(folder)
    assert torch.equal(back.directions, cond.directions) and back.metadata == cond.metadata
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name:") and "conditional-steering" in card
    assert "Rude prompts." in card and 'icv.Condition.from_pretrained("someone/toxic")' in card
    assert "layer 1, score > 0.25" in card and "(hand-made)" in card
    with pytest.raises(icv.VectorFileError, match="holds a condition, not a steering vector"):
        icv.InContextVector.from_pretrained(folder)
    vec.save_pretrained(tmp_path / "v")
    with pytest.raises(icv.VectorFileError, match="holds a steering vector, not a condition"):
        icv.Condition.from_pretrained(tmp_path / "v")
    with pytest.raises(icv.VectorExistsError):
        cond.save_pretrained(folder)
    cond.with_threshold(0.5).save_pretrained(folder, overwrite=True)
    assert icv.Condition.from_pretrained(folder).threshold == 0.5


def test_a_condition_is_read_from_the_hubs_cache_offline(vec, tmp_path, offline):
    cond = hand_made_condition()
    cache = tmp_path / "hub"
    folder = cond.save_pretrained(tmp_path / "c", repo_id="someone/toxic")
    lay_out_snapshot(cache, "someone/toxic", {p.name: p.read_bytes() for p in folder.iterdir()}, "e" * 40)
    assert torch.equal(
        icv.Condition.from_pretrained("someone/toxic", cache_dir=cache).directions, cond.directions
    )
    with pytest.raises(icv.VectorFileError, match="not in the Hub cache"):
        icv.InContextVector.from_pretrained("someone/toxic", cache_dir=cache)  # no vector.safetensors there
    published(vec, tmp_path)
    with pytest.raises(icv.VectorFileError):
        icv.Condition.from_pretrained("someone/positive", cache_dir=tmp_path / "hub")


def test_a_condition_pushes_its_folder(tmp_path, monkeypatch):
    fake = RecordingHub(monkeypatch)
    cond = hand_made_condition()
    url = cond.push_to_hub("someone/toxic", description="Rude prompts.")
    assert url.endswith("d" * 40)
    assert sorted(fake.uploaded) == ["README.md", "condition.safetensors"]
    assert fake.calls[1][1]["commit_message"] == "Upload icv condition toxic"
    (tmp_path / "sent.safetensors").write_bytes(fake.uploaded["condition.safetensors"])
    assert torch.equal(icv.Condition.load(tmp_path / "sent.safetensors").directions, cond.directions)
    with pytest.raises(icv.OptionError, match="owner/name"):
        cond.push_to_hub("not a repo")


# -- conditions in icv serve, icv push and icv pull ------------------------------------------


@pytest.fixture
def cond(llama):
    """A condition of the tiny llama (read from its own activations, as icv condition makes one)."""
    from tiny import char_tokenizer

    matching, other = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa"], ["zzz yy", "zz zzz", "z z z", "zzzzzz y"]
    return icv.extract_condition(llama, char_tokenizer(), matching, other, name="letters")


def published_condition(cond, tmp_path, repo_id="someone/letters") -> Path:
    """A Hub cache holding ``repo_id`` at main: the folder Condition.save_pretrained writes."""
    cache = tmp_path / "hub"
    folder = cond.save_pretrained(tmp_path / "published" / repo_id, repo_id=repo_id)
    lay_out_snapshot(cache, repo_id, {p.name: p.read_bytes() for p in folder.iterdir()}, "f" * 40)
    return cache


def test_a_server_loads_condition_folders_and_hub_ids_under_their_names(
    cond, vec, llama, tmp_path, offline, monkeypatch
):
    from types import SimpleNamespace

    from icv.serving import ModelShape, VectorLibrary
    from icv.serving.vllm.contract import VECTORS_ENV, load_library, plugin_environment
    from icv.serving.vllm.launch import has_conditions

    cache = published_condition(cond, tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    folder = cond.with_threshold(cond.threshold + 1).save_pretrained(tmp_path / "strict")
    shape = ModelShape.of(llama)
    vectors = vec.with_metadata(model_name=shape.model_name).save_pretrained(tmp_path / "positive")
    library = VectorLibrary.load(["someone/letters", folder, vectors], shape)
    assert library.condition_names == ["letters", "strict"] and library.names == ["positive"]
    assert torch.equal(library.condition("letters").directions, cond.directions)
    assert library.condition("strict").threshold == cond.threshold + 1
    assert library.rule("letters & ~strict") is not None
    # vLLM's launcher and workers see them through the same resolution (its prompts are then not
    # chunked): the workers' library, read from $ICV_VLLM_VECTORS, serves the same conditions.
    assert has_conditions(["someone/letters"]) and has_conditions([folder]) and not has_conditions([vectors])
    env = plugin_environment(["someone/letters", folder, vectors], {})
    monkeypatch.setenv(VECTORS_ENV, env[VECTORS_ENV])
    config = SimpleNamespace(
        hf_config=SimpleNamespace(model_type=shape.model_type),
        hf_text_config=SimpleNamespace(hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers),
        served_model_name=shape.model_name,
        model=shape.model_name,
    )
    workers = load_library(config)
    assert workers.condition_names == ["letters", "strict"] and workers.names == ["positive"]
    # A name of the other kind is refused with a hint at where it goes.
    with pytest.raises(RequestError, match="'letters' is a condition: name it in steering_when"):
        library.get("letters")
    with pytest.raises(RequestError, match="'positive' is a steering vector"):
        library.condition("positive")


def test_a_server_refuses_a_folder_whose_file_is_the_other_kind_and_keeps_another_models_condition_aside(
    cond, vec, llama, tmp_path
):
    from tiny import char_tokenizer

    from icv.serving import ModelShape, VectorLibrary

    shape = ModelShape.of(llama)
    disguised = tmp_path / "disguised"
    disguised.mkdir()
    cond.save(disguised / "vector.safetensors")  # a condition where a vector's folder holds its vector
    with pytest.raises(icv.VectorFileError, match="vector.safetensors holds a condition, not a vector"):
        VectorLibrary.load([disguised], shape)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    vec.save(swapped / "condition.safetensors")
    with pytest.raises(icv.VectorFileError, match="steering vector"):
        VectorLibrary.load([swapped], shape)
    with pytest.raises(icv.VectorFileError, match="no vector file or folder"):
        VectorLibrary.load([tmp_path / "missing"], shape)
    qwen = icv.extract_condition(tiny_qwen(), char_tokenizer(), ["aaa", "aa a"], ["zzz", "zz z"])
    library = VectorLibrary.load([qwen.save_pretrained(tmp_path / "qwen_letters")], shape)
    assert library.condition_names == [] and "qwen_letters" in library.unfit
    with pytest.raises(RequestError, match="cannot decide for this model"):
        library.condition("qwen_letters")


def tiny_qwen():
    from tiny import tiny_model

    return tiny_model("qwen2")


def test_icv_serve_stops_at_startup_on_a_bad_condition_argument_before_it_listens(
    cond, vec, llama, tokenizer, tmp_path, offline, monkeypatch, capsys
):
    import icv.models
    import icv.serving.server
    from icv.cli import main

    started: list = []
    monkeypatch.setattr(icv.models, "load_model", lambda name=None, **_: (llama, tokenizer))
    monkeypatch.setattr(os, "execve", lambda *a: started.append(a))  # never vLLM itself
    monkeypatch.setattr(icv.serving.server, "serve", lambda *a, **k: started.append(k))
    cond.save(tmp_path / "vector.safetensors")
    vec.save_pretrained(tmp_path / "v")
    (tmp_path / "v" / "vector.safetensors").write_bytes((tmp_path / "vector.safetensors").read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for bad, said in [
        (tmp_path / "v", "holds a condition, not a vector"),
        (tmp_path / "nothing-here", "no vector file or folder"),
        ("someone/missing", "not in the Hub cache"),
    ]:
        assert main(["serve", "--vectors", str(bad), "--port", "1"]) == 1
        assert said in capsys.readouterr().err
        # The vLLM engine refuses them in the launcher, before vLLM's process replaces it.
        assert main(["serve", "--engine", "vllm", "--vectors", str(bad), "--port", "1"]) == 1
        assert said in capsys.readouterr().err
    assert started == []  # no server was started for any of them
    good = cond.save_pretrained(tmp_path / "letters")
    assert main(["serve", "--vectors", str(good), "--port", "1"]) == 0
    assert len(started) == 1 and started[0]["port"] == 1
    assert "conditions (steering_when): letters" in capsys.readouterr().err


def test_icv_push_uploads_a_condition_file_or_folder_as_a_conditions_folder(
    cond, tmp_path, monkeypatch, capsys
):
    from icv.cli import main

    fake = RecordingHub(monkeypatch)
    cond.save(tmp_path / "letters.safetensors")
    folder = cond.save_pretrained(tmp_path / "letters")
    for given in (tmp_path / "letters.safetensors", folder):
        assert main(["push", str(given), "someone/letters", "--description", "Rows of a.", "--quiet"]) == 0
        assert capsys.readouterr().out.strip().endswith("d" * 40)
        assert sorted(fake.uploaded) == ["README.md", "condition.safetensors"]
        assert "Rows of a." in fake.uploaded["README.md"].decode()
        (tmp_path / "sent.safetensors").write_bytes(fake.uploaded["condition.safetensors"])
        sent = icv.Condition.load(tmp_path / "sent.safetensors")
        assert torch.equal(sent.directions, cond.directions) and sent.metadata == cond.metadata
    assert fake.calls[-1][1]["commit_message"] == "Upload icv condition letters"


def test_icv_pull_of_a_condition_repository_caches_and_writes_the_condition(
    cond, vec, tmp_path, offline, capsys
):
    from icv.cli import main

    cache = published_condition(cond, tmp_path)
    assert main(["pull", "someone/letters", "--cache-dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    cached = Path(out.strip())
    assert cached.name == "condition.safetensors" and str(cache) in str(cached)
    assert "Condition" in err
    target = tmp_path / "letters.safetensors"
    assert main(["pull", "someone/letters", "--cache-dir", str(cache), "--out", str(target)]) == 0
    pulled = icv.Condition.load(target)
    assert torch.equal(pulled.directions, cond.directions) and pulled.metadata == cond.metadata
    # A repository holding neither kind, or a condition's file that is not one, is refused.
    lay_out_snapshot(cache, "someone/empty", {"README.md": b"# nothing"}, "0" * 40)
    assert main(["pull", "someone/empty", "--cache-dir", str(cache)]) == 1
    assert "not in the Hub cache" in capsys.readouterr().err
    hostile = tmp_path / "hostile"
    vec.save(hostile)
    lay_out_snapshot(cache, "someone/fake", {"condition.safetensors": hostile.read_bytes()}, "1" * 40)
    assert main(["pull", "someone/fake", "--cache-dir", str(cache), "--out", str(tmp_path / "x")]) == 1
    assert "steering vector" in capsys.readouterr().err and not (tmp_path / "x").exists()
