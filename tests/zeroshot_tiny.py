"""Tiny randomly initialised text-image models, built offline, for the zero-shot and text-search tests.

open_clip: a registered architecture config (the real ``create_model``, ``get_tokenizer`` and ``encode_text``;
the vocabulary is the full 49,408 tokens of open_clip's bundled BPE tokenizer). transformers: CLIP and SigLIP
models saved to a folder with a small word-level tokenizer built with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

OPEN_CLIP_ARCH = "shelfsight-tiny-textclip"
WORDS = ("a", "photo", "of", "the", "apple", "banana", "milk", "carrots", "oatghurt", "golden", "delicious",
         "pink", "lady", "arla", "standard", "oatly", "natural", "product", "green", "yellow", "fruit")


def register_open_clip(folder: Path, embed_dim: int = 24) -> str:
    """Register the tiny architecture with open_clip; returns the ``open_clip:`` model name."""
    import open_clip

    config = {"embed_dim": embed_dim,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    path = folder / f"{OPEN_CLIP_ARCH}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return f"open_clip:{OPEN_CLIP_ARCH}"


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                            eos_token="[EOS]").save_pretrained(folder)


def save_transformers(folder: Path, kind: str = "clip") -> Path:
    """A tiny CLIP or SigLIP model and its tokenizer saved in ``folder``; returns the folder."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    text = {"vocab_size": len(WORDS) + 4, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 12, "pad_token_id": 0, "bos_token_id": 2,
            "eos_token_id": 3}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    if kind == "clip":
        model: Any = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    return folder
