"""``shelfsight finetune``: a backbone trained end to end, saved as a backbone of its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shelfsight.cli.common import DataDir, console

if TYPE_CHECKING:
    from shelfsight.adapt import FinetuneResult


def finetune_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone to fine-tune (see `shelfsight models`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name, image folder or manifest.")],
    output: Annotated[Path | None, typer.Option(help="Save folder (default: CACHE/finetuned/<name>).")] = None,
    settings: Annotated[Path | None, typer.Option("--config", help="YAML of fine-tuning settings "
                                                  "(FinetuneConfig fields, or a bench config's finetune:).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Per process and step.")] = None,
    accum_steps: Annotated[int | None, typer.Option(min=1, help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of the backbone.")] = None,
    layer_decay: Annotated[float | None, typer.Option(help="Layer-wise lr decay, e.g. 0.75.")] = None,
    loss: Annotated[str | None, typer.Option(help="ce, arcface or proxy_anchor.")] = None,
    input_size: Annotated[int | None, typer.Option(min=1, help="Training crop (default: the backbone's).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes per process.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Start from random weights.")] = False,
    data_dir: DataDir = None,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and a finished model; "
                                          "train from scratch.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Fine-tune a backbone end to end; resumable. Several GPUs or nodes: launch it with torchrun."""
    import os

    from shelfsight.adapt import finetune, load_finetune_config
    from shelfsight.backbones import finetuned_name, get_spec, load_backbone
    from shelfsight.backbones.finetuned import default_output
    from shelfsight.catalog import load_catalog

    get_spec(model)  # a typo fails before the catalogue is scanned
    config = load_finetune_config(settings, epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr,
                                  layer_decay=layer_decay, loss=loss, input_size=input_size, seed=seed,
                                  device=device, num_workers=workers)
    catalog = load_catalog(dataset, data_dir=data_dir, image_root=image_root)
    name = finetuned_name(model, catalog.name)
    backbone = load_backbone(model, pretrained=not random_init)
    result = finetune(catalog, backbone, dataset=catalog.name, output=output or default_output(name), config=config,
                      name=name, resume=not restart, progress=not quiet, console=console)
    if os.environ.get("RANK", "0") != "0":
        return
    _print_finetuned(result, model, dataset, output)


def _print_finetuned(result: FinetuneResult, model: str, dataset: str, output: Path | None) -> None:
    """What was trained, and the backbone name to embed with it."""
    from shelfsight.backbones import finetuned_name

    table = Table(title=f"{result.name}", show_header=False)
    for row in (("folder", str(result.folder)), ("epochs", f"{result.epochs} (best {result.best_epoch + 1})"),
                ("best val accuracy", f"{result.best_val_accuracy:.4f}"),
                ("training", f"{result.costs['tune_seconds']:.0f} s · {result.costs['train_images_per_s']:.1f} img/s"),
                ("device", f"{result.device} x {result.world_size}")):
        table.add_row(*row)
    console.print(table)
    target = result.name if output is None else finetuned_name(model, str(result.folder))
    console.print(f"use it as a backbone: shelfsight embed --model '{target}' --dataset {dataset}")
