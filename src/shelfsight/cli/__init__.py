"""The ``shelfsight`` command: parse, call the public API, print. No logic of its own.

One module per group of commands: ``registry`` (models, datasets), ``embed``, ``finetune``, ``bench``
(bench, compare, leaderboard, report, demo), ``serve`` (index, serve), ``scale`` (bulk-index),
``duplicates`` and ``milvus_server`` (milvus start, stop). This module assembles them, in the order
``shelfsight --help`` lists them, and turns a ShelfsightError into a message.
"""

from __future__ import annotations

import sys

import typer

from shelfsight.cli import bench, duplicates, embed, finetune, milvus_server, registry, scale, serve
from shelfsight.cli.common import console
from shelfsight.errors import ShelfsightError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Benchmark, adapt and serve image embeddings for e-commerce catalogues.")
app.command("models")(registry.models_command)
app.add_typer(registry.datasets_app, name="datasets")
app.command("embed")(embed.embed_command)
app.command("finetune")(finetune.finetune_command)
app.command("bench")(bench.bench_command)
app.command("compare")(bench.compare_command)
app.command("leaderboard")(bench.leaderboard_command)
app.command("report")(bench.report_command)
app.command("demo")(bench.demo_command)
app.command("run")(bench.run_command)
app.command("index")(serve.index_command)
app.command("serve")(serve.serve_command)
app.command("bulk-index")(scale.bulk_index_command)
app.command("duplicates")(duplicates.duplicates_command)
app.add_typer(milvus_server.milvus_app, name="milvus")


def main() -> None:
    """Entry point: a ShelfsightError is a message for the user, not a stack trace."""
    try:
        app()
    except ShelfsightError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


__all__ = ["app", "console", "main"]
