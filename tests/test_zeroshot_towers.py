"""Text towers on tiny random open_clip and transformers models: the same dimension and normalisation as the
image tower, the library's own text features, and a clear refusal for image-only models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shelfsight.backbones import NoTextTowerError, get_spec, load_backbone, require_text_encoder
from shelfsight.embeddings import embed_catalog
from zeroshot_tiny import register_open_clip, save_transformers

TEXTS = ["a photo of golden delicious", "a photo of milk", "banana"]


def _image_vectors(backbone, side: int = 32) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Image embeddings normalised as extraction does (``F.normalize`` of the encoder's output)."""
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return torch.nn.functional.normalize(backbone.encoder(pixels), dim=1).numpy()


def test_open_clip_text_tower_matches_encode_text(tmp_path: Path) -> None:
    import open_clip

    name = register_open_clip(tmp_path)
    backbone = load_backbone(name, pretrained=False)
    assert backbone.spec.has_text_tower is True and backbone.has_text_tower
    text = backbone.text_encoder
    assert text is not None and text.dim == 24 and text.max_tokens == 16
    vectors = text.encode(TEXTS)
    images = _image_vectors(backbone)
    assert vectors.shape == (3, 24) and vectors.dtype == np.float32 and images.shape[1] == vectors.shape[1]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    # the reference: open_clip's own tokenizer and encode_text on the very model the image tower belongs to
    model = text.tower.model
    assert backbone.encoder.model is model.visual
    with torch.inference_mode():
        expected = model.encode_text(open_clip.get_tokenizer(name.partition(":")[2])(TEXTS), normalize=True)
    assert np.allclose(vectors, expected.numpy(), atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])  # different texts, different vectors


def test_text_tower_costs_nothing_in_the_image_parameter_count(tmp_path: Path) -> None:
    backbone = load_backbone(register_open_clip(tmp_path), pretrained=False)
    visual = sum(p.numel() for p in backbone.encoder.model.parameters())
    assert backbone.num_parameters == visual
    assert backbone.text_encoder is not None and backbone.text_encoder.num_parameters > visual


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_text_tower_matches_the_models_own_embeddings(tmp_path: Path, kind: str) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = save_transformers(tmp_path / kind, kind)
    backbone = load_backbone(f"hf:{folder}")
    assert backbone.spec.has_text_tower is None and backbone.has_text_tower  # decided by the loaded model
    text = require_text_encoder(backbone.text_encoder, backbone.spec.name, "this test")
    vectors = text.encode(TEXTS)
    images = _image_vectors(backbone)
    assert vectors.shape[1] == images.shape[1] == text.dim
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reference = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    padding = "max_length" if kind == "siglip" else True
    tokens = tokenizer(TEXTS, padding=padding, max_length=12, truncation=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = reference(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"),
                        pixel_values=pixels)
    # the model's forward pass normalises both embeddings for its logits: the same vectors
    assert np.allclose(vectors, torch.nn.functional.normalize(out.text_embeds, dim=1).numpy(), atol=1e-5)
    assert np.allclose(images, torch.nn.functional.normalize(out.image_embeds, dim=1).numpy(), atol=1e-5)


def test_long_text_is_truncated_to_the_context_length(tmp_path: Path) -> None:
    backbone = load_backbone(register_open_clip(tmp_path), pretrained=False)
    text = backbone.text_encoder
    assert text is not None
    long = " ".join(["apple"] * 200)
    assert np.isfinite(text.encode([long])).all()
    with pytest.raises(TypeError, match="list of texts"):
        text.encode("one string")  # type: ignore[arg-type]


def test_image_only_models_refuse_with_a_clear_error() -> None:
    backbone = load_backbone("timm:test_vit", pretrained=False)
    assert backbone.spec.has_text_tower is False and not backbone.has_text_tower
    assert backbone.text_encoder is None
    with pytest.raises(NoTextTowerError, match="zero-shot tagging needs a text tower.*'timm:test_vit'.*open_clip"):
        require_text_encoder(backbone.text_encoder, backbone.spec.name, "zero-shot tagging")


def test_the_spec_says_which_models_have_a_text_tower() -> None:
    assert get_spec("clip_vit_b16_laion2b").has_text_tower is True
    assert get_spec("marqo_ecommerce_b").has_text_tower is True
    assert get_spec("efficientnet_lite0").has_text_tower is False
    assert get_spec("dinov2_vit_b14").has_text_tower is False


def test_transformers_dual_encoder_embeds_a_catalogue(tmp_path: Path, grocery_root: Path) -> None:
    """The image side of a transformers CLIP goes through extraction like any backbone (it used to need
    text inputs in ``forward``)."""
    from shelfsight.catalog import load_catalog

    backbone = load_backbone(f"hf:{save_transformers(tmp_path / 'clip')}", preprocess={"input_size": 32})
    catalog = load_catalog("grocery-store", splits=("val",), data_dir=grocery_root)
    result = embed_catalog(catalog.subset(catalog.ids[:4]), backbone, num_workers=0, runtime="torch")
    assert result.vectors.shape == (4, 12)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_copies_of_the_image_encoder_leave_the_text_tower_behind(tmp_path: Path) -> None:
    """Batch-norm folding and fine-tuning deep-copy the image encoder: the copy must not drag the text tower."""
    import copy

    backbone = load_backbone(register_open_clip(tmp_path), pretrained=False)
    clone = copy.deepcopy(backbone.encoder)
    assert clone.text_factory is None and backbone.encoder.text_factory is not None
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(clone(pixels), backbone.encoder(pixels))
    assert backbone.text_encoder is not None


def test_a_missing_tokenizer_is_a_clear_error_at_first_text_use(tmp_path: Path) -> None:
    from shelfsight.errors import ModelUnavailableError

    folder = save_transformers(tmp_path / "clip")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    backbone = load_backbone(f"hf:{folder}")
    assert backbone.has_text_tower  # the images still embed; the words need the tokenizer
    with pytest.raises(ModelUnavailableError, match="cannot read the tokenizer of .*clip"):
        _ = backbone.text_encoder
