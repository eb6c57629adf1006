"""What the command modules share: the console they print to and the options that recur."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
if not console.is_terminal:  # logs and pipes: wide enough for the leaderboard's columns
    console = Console(width=160)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Datasets root (default: $SHELFSIGHT_DATA_DIR).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Cache root (default: $SHELFSIGHT_CACHE_DIR).")]
BuildTimeout = Annotated[float, typer.Option(
    "--build-timeout", min=1, help="Seconds to wait for a Milvus server to build the index (progress is shown).")]
ImageRoot = Annotated[Path | None, typer.Option("--image-root", help="Base folder for a manifest's relative paths "
                                                                 "(default: the manifest's folder).")]
Group = Annotated[str | None, typer.Option(
    "--group", help="A manifest's column saying who shot each photo (a seller, a listing): splits keep a group on "
                    "one side. Default: a column called 'group' if any; 'none' for no group.")]
