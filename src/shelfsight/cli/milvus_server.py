"""``shelfsight milvus start|stop``: a local Milvus server (the ``milvus`` wheel) on loopback, for trials and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shelfsight.cli.common import console

milvus_app = typer.Typer(no_args_is_help=True, help="A local Milvus server on 127.0.0.1 (pip package 'milvus').")
DataFolder = Annotated[Path, typer.Option("--data", help="The server's data folder (config, logs, storage).")]


@milvus_app.command("start")
def start_command(
    data: DataFolder = Path("milvus-data"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")] = 19530,
    all_interfaces: Annotated[bool, typer.Option(
        "--all-interfaces", help="Where no private network namespace can be made, accept a server that listens "
                                 "on every interface (Milvus 2.3.5 cannot bind loopback itself).")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the server to answer.")] = 180.0,
) -> None:
    """Start a server in the background and print its URI; it runs until `shelfsight milvus stop`."""
    from shelfsight.search.milvus_server import start_milvus_server

    server = start_milvus_server(data, port=port, all_interfaces=all_interfaces, timeout=timeout)
    where = "127.0.0.1 only" if server.isolated else "[yellow]every interface[/]"
    console.print(f"Milvus {server.version} at {server.uri} ({where}; process group {server.pid}, data "
                  f"{server.data_dir}); stop it with: shelfsight milvus stop --data {server.data_dir}")


@milvus_app.command("stop")
def stop_command(
    data: DataFolder = Path("milvus-data"),
    grace: Annotated[float, typer.Option(min=0, help="Seconds before the server is killed.")] = 15.0,
) -> None:
    """Stop the server started on --data (by the process group recorded in its server.json)."""
    from shelfsight.search.milvus_server import stop_milvus_server

    server = stop_milvus_server(data, grace=grace)
    console.print(f"stopped Milvus at {server.uri} (process group {server.pid})" if server is not None
                  else f"no server is recorded in {data}")
