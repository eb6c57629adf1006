"""Images for fine-tuning: decoded and augmented to ``uint8`` tensors in worker processes, each item's
augmentation seeded by ``(seed, epoch, item)`` so that it depends on nothing else (not the number of
workers, not the number of ranks, not what ran before)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from shelfsight.adapt.finetune_config import FinetuneConfig
from shelfsight.backbones import Preprocess, build_pixel_transform
from shelfsight.catalog import CatalogItem
from shelfsight.catalog.images import decode_image
from shelfsight.errors import ImageDecodeError


def derived_seed(*parts: int) -> int:
    """A 32-bit seed that depends on ``parts`` only (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and numpy's global state for one block, then restore them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


Sample = tuple[torch.Tensor, int] | None


class LabelledImages(Dataset[Sample]):
    """Decoded, transformed images with their labels; an undecodable file yields None (dropped by collate).

    With ``seed`` set, the transform of item ``i`` in epoch ``e`` draws from ``(seed, e, i)`` only.
    """

    def __init__(self, items: Sequence[CatalogItem], labels: np.ndarray, transform: Callable[..., torch.Tensor],
                 draft_size: int | None, seed: int | None = None) -> None:
        self.paths = [str(item.image_path) for item in items]
        self.labels = labels.tolist()
        self.transform = transform
        self.draft_size = draft_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        try:
            image = decode_image(self.paths[index], draft_size=self.draft_size)
        except ImageDecodeError:
            return None
        if self.seed is None:
            return self.transform(image), self.labels[index]
        with _seeded(derived_seed(self.seed, self.epoch, index)):
            return self.transform(image), self.labels[index]


def collate(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the readable samples; an unreadable image only shortens its batch."""
    good = [s for s in samples if s is not None]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good], dtype=torch.int64)


def train_transform(config: FinetuneConfig, preprocess: Preprocess) -> Callable[..., torch.Tensor]:
    """PIL image to an augmented ``uint8`` tensor (normalised later, batched, where the model runs)."""
    if config.augment == "none":
        return build_pixel_transform(preprocess)
    if config.augment == "timm":
        from timm.data import create_transform

        return create_transform(  # type: ignore[no-any-return]
            preprocess.input_size, is_training=True, normalize=False, scale=config.scale, hflip=config.hflip,
            color_jitter=config.color_jitter, auto_augment=config.auto_augment,
            interpolation=preprocess.interpolation)
    from torchvision import transforms

    steps: list[Any] = [transforms.RandomResizedCrop(preprocess.input_size, scale=config.scale, antialias=True,
                                                     interpolation=transforms.InterpolationMode(preprocess.interpolation)),
                        transforms.RandomHorizontalFlip(config.hflip)]
    if config.color_jitter:
        steps.append(transforms.ColorJitter(*(config.color_jitter,) * 3))
    return transforms.Compose([*steps, transforms.PILToTensor()])


def worker_options(config: FinetuneConfig, device: torch.device) -> dict[str, Any]:
    """DataLoader options; by default the decoding workers of extraction, shared among the processes
    ``torchrun`` started on this machine."""
    from shelfsight.embeddings.extract import default_num_workers

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(1, default_num_workers() // local_processes) if config.num_workers is None else config.num_workers
    if workers == 0:
        return {"num_workers": 0, "pin_memory": device.type == "cuda"}
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": False,
            "multiprocessing_context": "fork", "prefetch_factor": 4}
