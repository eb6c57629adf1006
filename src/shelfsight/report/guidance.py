"""What a run tells its reader to do: the exact ``shelfsight index`` and ``shelfsight serve`` commands that serve
the recommended choice (:func:`serving_commands`). The recommendation and the paper's guidance checked against the
run's numbers are computed by the bench (``bench.recommend``, ``bench.guidance``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelfsight.backbones import VECTORS
from shelfsight.bench import strategies as registry
from shelfsight.bench.choices import AUTO_TAGGING, VISUAL_SEARCH
from shelfsight.bench.recommend import TIERS

if TYPE_CHECKING:
    from shelfsight.bench.choices import Choice
    from shelfsight.bench.recommend import Recommendations
    from shelfsight.bench.results import CellResult
    from shelfsight.report.data import RunData

TOPTUNE, FINETUNE = registry.toptune.NAME, registry.finetune.NAME

SERVE_PORT = 8000
NO_TAG = {registry.knn.NAME: "kNN tagging has no head: its vote is the labels of `POST /search`'s nearest items",
          FINETUNE: "the fine-tuned backbone's cosine head is not an `index --head`: /tag is not served"}


@dataclass(frozen=True)
class ServingCommands:
    """One index and its service for a dataset's recommended choice(s), copy-pasteable."""

    dataset: str
    serves: str
    """What it answers: "visual search and auto-tagging", or one of them."""
    index: str
    serve: str
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [f"# {self.dataset}: {self.serves}", *(f"# {note}" for note in self.notes), self.index, self.serve]


@dataclass(frozen=True)
class _Served:
    """What one choice needs from ``shelfsight index``."""

    model: list[str]
    head: str | None = None
    vectors_head: bool = False
    notes: tuple[str, ...] = ()


def serving_commands(run: RunData, recs: Recommendations) -> list[ServingCommands]:
    """Per dataset, the commands that index and serve the widest budget's visual search and auto-tagging choices:
    one index when both use the same backbone and at most one head (the tagging head beside the search vectors),
    else one each."""
    found: list[ServingCommands] = []
    port = SERVE_PORT
    for dataset in dict.fromkeys(r.dataset for r in recs.items):
        search = recs.get(VISUAL_SEARCH, dataset, TIERS[-1].name).best
        tagging = recs.get(AUTO_TAGGING, dataset, TIERS[-1].name).best
        wanted = [(task, _served(run, dataset, choice, task == VISUAL_SEARCH)) for task, choice in
                  ((VISUAL_SEARCH, search), (AUTO_TAGGING, tagging)) if choice is not None]
        if len(wanted) == 2 and wanted[0][1].model == wanted[1][1].model and (
                None in (wanted[0][1].head, wanted[1][1].head) or wanted[0][1].head == wanted[1][1].head):
            one = wanted[1][1]
            wanted = [(f"{VISUAL_SEARCH} and {AUTO_TAGGING}",
                       _Served(one.model, one.head or wanted[0][1].head, wanted[0][1].vectors_head,
                               tuple(dict.fromkeys(wanted[0][1].notes + one.notes))))]
        for task, served in wanted:
            suffix = {VISUAL_SEARCH: "-search", AUTO_TAGGING: "-tagging"}.get(task, "") if len(wanted) > 1 else ""
            folder = run.run_dir.resolve() / "index" / f"{dataset}{suffix}"
            index = ["shelfsight", "index", *served.model, *_catalogue(run.config, dataset), "--index-dir",
                     str(folder)]
            index += ["--head", served.head] if served.head else []
            index += ["--vectors", "head"] if served.vectors_head else []
            serve = ["shelfsight", "serve", "--index-dir", str(folder), "--port", str(port)]
            found.append(ServingCommands(dataset, task, shlex.join(index), shlex.join(serve), served.notes))
            port += 1
    return found


def _served(run: RunData, dataset: str, choice: Choice, searching: bool) -> _Served:
    """The model options, head and notes that serve ``choice``: a head from its cell's work folder."""
    entry = _model_entry(run.config, choice.model)
    model = ["--model", str(entry.get("name", choice.model))]
    model += ["--weights", str(entry["weights"])] if entry.get("weights") else []
    notes = [f"the run embedded with preprocessing {entry['preprocess']}, which `index` has no option for: the index "
             "embeds at the model's own, so its vectors (and a head's inputs) differ from those measured"] \
        if entry.get("preprocess") else []
    notes += ["a randomly initialised model (pretrained: false): `index` loads the pre-trained weights"] \
        if entry.get("pretrained") is False else []
    notes += [f"{choice.model} is precomputed vectors ({entry.get('source')}): it has no network to embed the "
              f"catalogue or a query, so put the model that made them in place of `--model {VECTORS}` (a registered "
              "name, or its ONNX file as onnx:PATH)"] if entry.get("name") == VECTORS else []
    cell = _cell(run, dataset, choice)
    details = cell.details if cell is not None else {}
    here = run.run_dir / "work" / cell.cell.cell_id / "head" if cell is not None else None
    head = str(here) if here is not None and (here / "head.json").is_file() else details.get("head")  # a moved run
    if choice.strategy == FINETUNE and details.get("finetuned"):
        model[1] = f"{model[1]}@{FINETUNE}:{Path(str(details['finetuned'])).resolve()}"
    if searching:
        if choice.strategy.startswith(TOPTUNE) and head:
            return _Served(model, str(Path(head).resolve()), True, tuple(notes))
        return _Served(model, None, False, tuple(notes))
    if head and (Path(head) / "head.json").is_file():
        return _Served(model, str(Path(head).resolve()), False, tuple(notes))
    reason = NO_TAG.get(choice.strategy, f"{choice.label} saved no head in its work folder: /tag is not served")
    return _Served(model, None, False, (*notes, reason))


def _model_entry(config: dict[str, Any], label: str) -> dict[str, Any]:
    """The config's model entry whose label (alias, else name) the results use."""
    for entry in config.get("models") or []:
        item = {"name": entry} if isinstance(entry, str) else dict(entry)
        if label in (item.get("alias"), item.get("name")):
            return item
    return {"name": label}


def _catalogue(config: dict[str, Any], dataset: str) -> list[str]:
    """``--catalog`` (the user catalogue behind an alias, else the registered name), its image root, data dir."""
    entry = next((dict(e) if isinstance(e, dict) else {"name": e} for e in config.get("datasets") or []
                  if (e.get("name") if isinstance(e, dict) else e) == dataset), {"name": dataset})
    options = ["--catalog", _absolute(str(entry["source"])) if entry.get("source") else str(entry["name"])]
    options += ["--image-root", _absolute(str(entry["image_root"]))] if entry.get("image_root") else []
    options += ["--data-dir", str(config["data_dir"])] if config.get("data_dir") and not entry.get("source") else []
    return options


def _absolute(location: str) -> str:
    """A user catalogue's path made absolute where it exists (the commands may be pasted in another folder)."""
    return str(Path(location).resolve()) if Path(location).exists() else location


def _cell(run: RunData, dataset: str, choice: Choice) -> CellResult | None:
    """The choice's stored cell (the first seed of a repeated one)."""
    cells = [c for c in run.cells if c.status == "ok" and c.cell.group == (choice.model, dataset, choice.strategy)]
    return min(cells, key=lambda c: c.cell.seed or 0, default=None)
