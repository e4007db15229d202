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
    counts = Counter(w for text in captions for w in caption_words(text))
    counts.update({w: min_count for w in extra_words})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= min_count and word not in vocab:
            vocab[word] = len(vocab)
    return _word_level_tokenizer(vocab, max_length)


def _word_level_tokenizer(vocab: dict[str, int], max_length: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+, as caption_words()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=max_length, **SPECIAL_TOKENS)


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


def is_caption_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is one of ours (word-level, built by :func:`build_caption_tokenizer`)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return json.loads(backend.to_str()).get("model", {}).get("type") == "WordLevel"


def extend_caption_vocabulary(tokenizer: PreTrainedTokenizerFast, text_encoder: CLIPTextModel,
                              captions: Iterable[str]) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """``tokenizer`` with the words of ``captions`` it lacks, and ``text_encoder`` resized in place.

    For fine-tuning on new data: existing words keep their ids (the model is unchanged for every
    prompt it knew); new words get the next ids and embeddings initialised to the mean of the known
    ones. Tokenizers that are not ours (e.g. CLIP's, whose vocabulary is fixed) come back unchanged.
    Returns the tokenizer and the added words.
    """
    import torch

    if not is_caption_tokenizer(tokenizer):
        return tokenizer, []
    vocab = dict(tokenizer.get_vocab())
    counts = Counter(w for text in captions for w in caption_words(text))
    new = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in vocab]
    if not new:
        return tokenizer, []
    for word in new:
        vocab[word] = len(vocab)
    extended = _word_level_tokenizer(vocab, tokenizer.model_max_length)
    old = text_encoder.get_input_embeddings().weight.shape[0]
    text_encoder.resize_token_embeddings(len(vocab), mean_resizing=False)
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[old:] = weight[:old].mean(dim=0, keepdim=True)
    return extended, new
