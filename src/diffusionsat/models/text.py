"""Small text encoders and tokenizers that this project trains itself (no CLIP weights offline).

Full-size models use the CLIP text encoder and tokenizer of their Stable Diffusion folder; the
small presets use a word-level tokenizer built from the training captions and a small
``CLIPTextModel``, both saved and loaded with the usual ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
_WORD = re.compile(r"\w+|[^\w\s]+")


def caption_words(text: str) -> list[str]:
    """Lower-cased words and punctuation of a caption (the tokenizer's pre-tokenisation)."""
    return _WORD.findall(text.lower())


def build_caption_tokenizer(
    captions: Iterable[str], max_length: int = 32, min_count: int = 1, extra_words: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the words of ``captions`` (plus ``extra_words``).

    Words never seen in training map to ``<unk>``; sequences get ``<bos>``/``<eos>`` and are padded
    to ``max_length`` like CLIP's tokenizer, so pipelines treat both the same way.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    counts = Counter(w for text in captions for w in caption_words(text))
    counts.update({w: min_count for w in extra_words})
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= min_count and word not in vocab:
            vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+, as caption_words()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=max_length, **SPECIAL_TOKENS)
    return tokenizer


def build_text_encoder(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_length: int = 32,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
) -> CLIPTextModel:
    """A small randomly-initialised CLIP text transformer for the given vocabulary."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return CLIPTextModel(config)
