"""``shelfsight index`` and ``shelfsight serve``: build the collection a service searches, and serve it."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shelfsight.cli.common import BuildTimeout, CacheDir, DataDir, Group, console
from shelfsight.errors import ShelfsightError

if TYPE_CHECKING:
    from shelfsight.serve import IndexReport

Calibrate = Annotated[bool, typer.Option("--calibrate", help="Calibrate the 'no close match' threshold on the "
                                         "indexed catalogue (held-out classes as unknown): match.json.")]
HandThreshold = Annotated[float | None, typer.Option(
    min=-1.0, max=1.0, help="Set the 'no close match' top-1 cosine threshold by hand (match.json).")]
TagThreshold = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Head probability below which a tag is 'no close match', set by hand (with or without "
                           "--match-threshold).")]
UnknownShare = Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of classes held out (calibration).")]
TargetPrecision = Annotated[float, typer.Option(min=0.01, max=1.0, help="Precision of 'match' answers the "
                                                "threshold is chosen for (as the bench's openset).")]
ServeThreshold = Annotated[float | None, typer.Option(
    min=-1.0, max=1.0, help="Top-1 cosine below which a search is 'no close match' (default: the index folder's "
                            "match.json, from `shelfsight index --calibrate`).")]
ServeTagThreshold = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="Head probability below which a tag is 'no close match' (with --match-threshold or "
                           "alone; either replaces the index folder's match.json).")]
IndexDir = Annotated[Path, typer.Option("--index-dir", help="Index folder: manifest, Milvus Lite store, uploads.")]


def index_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone name (see `shelfsight models`).")],
    catalog: Annotated[str, typer.Option("--catalog", "-c", help="Dataset name, image folder or manifest.")],
    head: Annotated[Path | None, typer.Option(help="A saved head folder, RUN/work/CELL/head of a toptune, linear or "
                                                    "ncm cell: enables /tag.")] = None,
    index_dir: IndexDir = Path("shelfsight-index"),
    split: Annotated[list[str] | None, typer.Option("--split", "-s", help="Split(s) to index (repeatable).")] = None,
    vectors: Annotated[str, typer.Option(help="Store 'backbone' or top-tuned 'head' vectors (a toptune head "
                                              "only: linear and ncm heads tag).")] = "backbone",
    uri: Annotated[str | None, typer.Option(help="Milvus server URI (default: Milvus Lite).")] = None,
    token: Annotated[str, typer.Option(envvar="MILVUS_TOKEN", help="Milvus server token.")] = "",
    collection: Annotated[str, typer.Option(help="Milvus collection name.")] = "catalogue",
    index_type: Annotated[str, typer.Option(help="FLAT, IVF_FLAT or HNSW.")] = "FLAT",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild: drops the collection and uploads.")] = False,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Export the ONNX Runtime encoder now.")] = True,
    data_dir: DataDir = None,
    cache_dir: CacheDir = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file/folder instead of the hub.")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Base folder for a manifest's relative paths.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: 16 on CPU, 128 on GPU.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding worker processes.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    group: Group = None,
    sync: Annotated[bool, typer.Option("--sync", help="Also replace items whose label, metadata or "
                                                      "photo changed, and delete those it no longer lists.")] = False,
    runtime: Annotated[str, typer.Option(help="Extraction runtime: auto, torch, onnx or openvino.")] = "auto",
    compress: Annotated[str | None, typer.Option(
        help="Store vectors compressed: pcaD (PCA fitted on this catalogue), sq8 (Milvus int8 codes), pcaD-sq8, "
             "or none (default: the folder's own).")] = None,
    build_timeout: BuildTimeout = 300.0,
    calibrate: Calibrate = False,
    match_threshold: HandThreshold = None,
    tag_threshold: TagThreshold = None,
    calibration_seed: Annotated[int, typer.Option(help="Seed of the held-out classes' draw.")] = 0,
    unknown_share: UnknownShare = 0.25,
    target_precision: TargetPrecision = 0.95,
) -> None:
    """Build or extend the Milvus collection that `shelfsight serve` searches (items already there are kept)."""
    from shelfsight.catalog import load_catalog
    from shelfsight.serve import build_index

    _check_index_options(model, vectors, calibrate, match_threshold, tag_threshold)
    source = load_catalog(catalog, data_dir=data_dir, splits=tuple(split) if split else None, cache_dir=cache_dir,
                          image_root=image_root, group=group)
    if vectors == "head":
        console.print("[yellow]top-tuned vectors rank by category[/]: a head trained on class labels pulls a class "
                      "together, so its photos score within a few thousandths of each other and look-alikes are not "
                      "told from the rest of the category; for look-alike search index the backbone vectors "
                      "(--vectors backbone, the default) and keep the head for tagging")
    report = build_index(model, source, index_dir, head=head, vectors=vectors,  # type: ignore[arg-type]
                         weights=weights, uri=uri, token=token, collection=collection, index_type=index_type,
                         overwrite=overwrite, export_onnx=onnx, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=workers, progress=not quiet, sync=sync,
                         runtime=runtime, compress=compress, build_timeout=build_timeout)  # type: ignore[arg-type]
    _print_summary(report)
    _print_warnings(report, source.root)
    _store_match(index_dir, token, calibrate, (match_threshold, tag_threshold), seed=calibration_seed,
                 unknown_share=unknown_share, target_precision=target_precision)


def _check_index_options(model: str, vectors: str, calibrate: bool, by_hand: float | None,
                         tag_by_hand: float | None) -> None:
    """Refused before anything is embedded: an unknown model, vector kind, or both ways to set the threshold."""
    from shelfsight.backbones import get_spec

    get_spec(model)
    if vectors not in ("backbone", "head"):
        raise typer.BadParameter("use backbone or head", param_hint="--vectors")
    if calibrate and (by_hand is not None or tag_by_hand is not None):
        raise typer.BadParameter("give either --calibrate or thresholds by hand (--match-threshold, "
                                 "--tag-threshold)", param_hint="--match-threshold")


def _store_match(index_dir: Path, token: str, calibrate: bool, by_hand: tuple[float | None, float | None],
                 **options: float) -> None:
    """Write the index folder's match.json: calibrated on the stored items, or the thresholds given (search, tag)."""
    if not calibrate and by_hand == (None, None):
        return
    from shelfsight.serve.indexer import open_collection
    from shelfsight.serve.manifest import IndexLayout, read_manifest
    from shelfsight.serve.match import by_hand as hand_record
    from shelfsight.serve.match import calibrate_index, summary_lines, write_match

    layout = IndexLayout.at(index_dir)
    if by_hand != (None, None):
        write_match(layout, hand_record(*by_hand))
        shown = " and ".join(f"{task} threshold {value:.4f}" for task, value in zip(("match", "tag"), by_hand,
                                                                                     strict=True) if value is not None)
        console.print(f"{shown} (set by hand) written to {layout.folder / 'match.json'}")
        return
    index = open_collection(layout, read_manifest(layout), token=token)
    try:
        record = calibrate_index(index, layout, **options)
    finally:
        index.close()
    for line in summary_lines(record):
        console.print(line)


def _print_summary(report: IndexReport) -> None:
    """What the run added, removed and kept, and the bytes per stored vector."""
    console.print(f"{report.added} added ({report.embedded} photo(s) embedded, the rest from the cache), "
                  f"{report.removed} removed, {report.already_indexed} already indexed, {len(report.skipped)} skipped "
                  f"(unreadable), {report.total} items in {report.folder} ({report.vectors} vectors, {report.dim}-d, "
                  f"{report.seconds:.1f} s)" + (f"; ONNX encoder {report.onnx}" if report.onnx else ""))
    console.print(_storage_line(report))


def _print_warnings(report: IndexReport, root: Path) -> None:
    """What ``--sync`` replaced, and the catalogue items that were not indexed as the catalogue says, and why."""
    if report.refreshed:
        console.print(f"{len(report.refreshed)} item(s) replaced because their label, metadata or photo changed")
    for item_id, reason in [(i, r) for i, r in report.skipped if r.startswith("id refused")][:5]:
        console.print(f"[yellow]skipped {item_id!r}[/]: {reason}")
    if report.conflicts:
        shown = ", ".join(f"{item_id!r} ({where})" for item_id, where in report.conflicts[:5])
        console.print(f"[yellow]{len(report.conflicts)} catalogue item(s) not indexed: their id is already taken[/]: "
                      f"{shown}; delete those items (DELETE /items/ID) or rename the photos, then run again")
    if report.outside_root:
        console.print(f"[yellow]{report.outside_root} item(s) lie outside {root}: searchable, but their images "
                      "are served only with `shelfsight serve --allow-images-from FOLDER` (or index with --image-root "
                      "FOLDER holding every photo)")


def _storage_line(report: IndexReport) -> str:
    """Bytes per stored vector: the code as designed, and what Milvus Lite's files hold per item, measured."""
    code = "int8" if report.bytes_per_item == report.dim else "float32"
    line = (f"compression {report.compression}: {report.bytes_per_item:,} bytes per stored vector "
            f"({report.dim}-d {code})")
    if report.index_bytes_per_item is not None and report.disk_bytes_per_item is not None:
        line += (f"; measured {report.index_bytes_per_item:,.0f} index bytes and {report.disk_bytes_per_item:,.0f} "
                 "collection bytes on disk per item")
    return line


def serve_command(
    index_dir: IndexDir = Path("shelfsight-index"),
    host: Annotated[str, typer.Option(help="Interface to listen on (beyond loopback: needs --api-key or "
                                           "--read-only, and --allowed-host).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    encoder: Annotated[str, typer.Option(help="auto (the faster that agrees), torch or onnx.")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest accepted upload (413 above).")] = 10.0,
    uri: Annotated[str | None, typer.Option(help="Milvus server URI, overriding the index folder's.")] = None,
    token: Annotated[str, typer.Option(envvar="MILVUS_TOKEN", help="Milvus server token.")] = "",
    api_key: Annotated[str, typer.Option(envvar="SHELFSIGHT_API_KEY", show_default=False,
                                         help="Key that POST/DELETE /items need (Authorization: Bearer KEY).")] = "",
    read_access: Annotated[str, typer.Option(help="open, or token: reads need the API key too.")] = "open",
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write (403).")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="Host names clients use (repeatable; default: loopback names only).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="Web origins allowed to call the API from a browser (repeatable; default: none).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Micro-batch size; 1 turns batching off.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(min=0, max=1000, help="Longest wait to fill a batch.")] = 5.0,
    batch_in_flight: Annotated[int, typer.Option(min=1, max=32, help="Photos of one /search/batch request queued "
                                                                   "at once per stage (fairness).")] = 4,
    max_decode_megapixels: Annotated[float, typer.Option(min=0.1, help="Decoded pixels allowed per image.")] = 16.0,
    decode_concurrency: Annotated[int, typer.Option(min=1, help="Photos decoded at once.")] = 2,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to receive a request body (408).")] = 60.0,
    header_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to receive a request's headers (408).")
                              ] = 10.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    allow_images_from: Annotated[list[Path] | None, typer.Option(
        help="Serve the images of items indexed from outside their catalogue's folder when they lie in this folder "
             "(repeatable; nothing else outside is served).")] = None,
    match_threshold: ServeThreshold = None,
    tag_threshold: ServeTagThreshold = None,
) -> None:
    """Serve visual search, tagging and catalogue changes over an index folder, with a web page at /."""
    _check_choices(encoder, read_access, api_key)
    # a port in use fails at once: on loopback (the default) before the serve package's imports (seconds); on
    # another interface after the check that it may be served there at all
    sock = _listen(host, port) if host in _LOOPBACK else None
    from shelfsight.serve import ServeError, ServeSettings, run_server
    from shelfsight.serve.opening import check_index_free
    from shelfsight.serve.security import LOOPBACK_HOSTS, check_binding

    settings = ServeSettings(
        index_dir=index_dir, encoder=encoder, max_upload_bytes=int(max_upload_mb * 1024 * 1024),  # type: ignore[arg-type]
        token=token, uri=uri, api_key=api_key, read_access=read_access, read_only=read_only,  # type: ignore[arg-type]
        allowed_hosts=allowed_host or list(LOOPBACK_HOSTS), cors_origins=cors_origin or [], max_batch=max_batch,
        max_wait_ms=max_wait_ms, batch_in_flight=batch_in_flight,
        max_decode_pixels=int(max_decode_megapixels * 1_000_000), decode_concurrency=decode_concurrency,
        body_timeout_s=body_timeout, header_timeout_s=header_timeout,
        allow_images_from=allow_images_from or [], match_threshold=match_threshold, tag_threshold=tag_threshold)
    try:
        check_binding(host, api_key=api_key, read_only=read_only, allowed_hosts=settings.allowed_hosts)
    except ServeError as error:
        raise typer.BadParameter(str(error), param_hint="--host") from None
    sock = sock or _listen(host, port)
    check_index_free(index_dir, uri)  # a missing folder, or one another process serves: one line, nothing loaded
    writes = "disabled" if read_only else "need the API key" if api_key else "open to this machine only (no key)"
    port = sock.getsockname()[1]
    console.print(f"serving {index_dir} on http://{host}:{port}/ (writes {writes}; schema at /openapi.json)")
    run_server(settings, host=host, port=port, log_level=log_level, sock=sock)


def _check_choices(encoder: str, read_access: str, api_key: str) -> None:
    if encoder not in ("auto", "torch", "onnx"):
        raise typer.BadParameter("use auto, torch or onnx", param_hint="--encoder")
    if read_access not in ("open", "token"):
        raise typer.BadParameter("use open or token", param_hint="--read-access")
    if read_access == "token" and not api_key:
        raise typer.BadParameter("token reads need --api-key (or $SHELFSIGHT_API_KEY)", param_hint="--read-access")


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _listen(host: str, port: int) -> socket.socket:
    """``host:port`` bound as uvicorn binds it (``SO_REUSEADDR``), or one line saying why not and what to do.
    Kept free of the serve package (its imports alone take seconds); ``serve.server.bind_port`` is the library's."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as error:
        sock.close()
        raise ShelfsightError(f"--host {host} is not a name or address of this machine ({error})") from None
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use on {host} (another `shelfsight serve`?): choose another --port"
        elif error.errno == errno.EACCES:
            reason = f"not allowed to listen on port {port} (below 1024 needs root): choose --port 1024 or above"
        else:
            reason = f"cannot listen on {host}:{port} ({error.strerror or error}): check --host and --port"
        raise ShelfsightError(reason) from None
    return sock
