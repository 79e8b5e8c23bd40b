"""Tiny random models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import copy
import functools

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 128
HIDDEN = 32
LAYERS = 3

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=256,
)
_LLAMA_LIKE = dict(_COMMON, num_key_value_heads=2)

FAMILIES: dict[str, dict] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": dict(_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": _LLAMA_LIKE,
    "qwen3": dict(_LLAMA_LIKE, head_dim=8),
    "qwen3_moe": dict(
        _LLAMA_LIKE, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
    "gemma": dict(_LLAMA_LIKE, head_dim=8),
    "gemma2": dict(_LLAMA_LIKE, head_dim=8),
    "gemma3_text": dict(_LLAMA_LIKE, head_dim=8, sliding_window=16),
    # The multimodal wrapper: a one-layer vision tower, a text model like gemma3_text's.
    "gemma3": dict(
        text_config=dict(
            _LLAMA_LIKE, head_dim=8, sliding_window=16, bos_token_id=1, eos_token_id=2, pad_token_id=0
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
        image_token_id=VOCAB - 1,
        boi_token_id=VOCAB - 3,
        eoi_token_id=VOCAB - 2,
    ),
    "phi": _COMMON,
    "phi3": dict(_LLAMA_LIKE, pad_token_id=0),
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "gpt2": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256),
    "gpt_neox": dict(_COMMON),
    "gptj": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256, rotary_dim=4),
    "falcon": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        new_decoder_architecture=False,
        multi_query=True,
    ),
    "opt": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=256,
        word_embed_proj_dim=HIDDEN,
    ),
    "bloom": dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4),
}


_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


@functools.cache
def _state(model_type: str) -> tuple:
    torch.manual_seed(1234)
    config = AutoConfig.for_model(model_type, **{**FAMILIES[model_type], **_TOKENS})
    model = AutoModelForCausalLM.from_config(config)
    return config, {k: v.clone() for k, v in model.state_dict().items()}


def tiny_model(model_type: str = "llama", dtype: torch.dtype = torch.float32):
    """A fresh tiny random model (same weights on every call for a given family)."""
    config, state = _state(model_type)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    model.load_state_dict(state)
    model.config._name_or_path = f"tiny-{model_type}"
    return model.to(dtype).eval()


class ByteTokenizer:
    """A tokenizer stand-in: one token per byte (mod the tiny vocabulary), BOS = 1."""

    pad_token_id = 0
    eos_token_id = 2
    padding_side = "right"
    model_max_length = 256

    def __call__(self, text, add_special_tokens=True, **_):
        ids = [3 + b % (VOCAB - 3) for b in text.encode("utf-8")]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def batch(self, texts, side="left"):
        """Padded input_ids and attention_mask for a batch, padded on `side`."""
        seqs = [self(t)["input_ids"] for t in texts]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask}


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer():
    """A real, saveable tokenizer: one token per printable ASCII character, BOS first, a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for code in [*range(32, 127), 10]:
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_llama(folder):
    """A tiny llama and :func:`char_tokenizer` saved as a model folder (what ``icv.load_model`` and the CLI read)."""
    tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


DEMOS = [
    ("the food was cold", "the food was warm"),
    ("service was slow and rude", "service was quick and kind"),
    ("i hated it", "i loved it"),
    ("dirty room", "clean room"),
]
