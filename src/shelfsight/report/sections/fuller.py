"""Sections a fuller config adds: a run without label budgets, compression or a duplicates pass (``shelfsight run``
makes none) says what each would show and prints the config lines (YAML) and commands that add it.

The label budgets offered stay inside the data: 1, 5, 10 and 25 photos per class, those below the fewest
training photos per class the run's cells learned from (their ``train`` / ``classes`` details), then ``all``.
"""

from __future__ import annotations

import copy
import html
import shlex
from typing import TYPE_CHECKING, Any

import yaml

from shelfsight.bench import strategies as registry
from shelfsight.report.data import RunData

if TYPE_CHECKING:
    from shelfsight.report.sections import Section

BUDGETS = (1, 5, 10, 25)
"""Labelled photos per class offered for label-efficiency curves, before the catalogue's cap."""
SUBSETS = 3
"""Subset draws per budget: the fewest with which a break-even is called (``bench.label_budgets.MIN_DRAWS``)."""
METHODS = ("float", "pca256-int8", "pca128-int8", "binary-rerank4", "pq32", "milvus:IVF_SQ8")
WHAT = {
    "label-budgets": "Label efficiency: quality against labelled photos per class, and the budget from which "
                     "top-tuning beats the pre-trained embedding",
    "compression": "Compression frontier: retrieval quality kept against bytes per photo, and the memory this "
                   "catalogue needs at its own size and grown x10 and x100",
    "duplicates": "Duplicates and leakage: duplicate listings, and the queries with a near-copy in their gallery",
}
ID = "fuller-config"


def build(run: RunData, present: set[str]) -> Section | None:
    """The section, or None when the run already has every section listed in ``WHAT``."""
    from shelfsight.report.sections import Section  # the package imports this module

    if not run.config or run.table.empty:
        return None
    missing = [name for name in WHAT if name not in present]
    additions = config_additions(run, missing)
    commands = _commands(run, missing, bool(additions))
    if not missing or not commands:
        return None
    snippet = yaml.safe_dump(additions, sort_keys=False, default_flow_style=None, width=100) if additions else ""
    whole = yaml.safe_dump(fuller_config(run.config, additions), sort_keys=False, width=100) if additions else ""
    names = [WHAT[n].split(":")[0].lower() for n in missing]
    listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    lead = f"This run has no section for {listed}."
    items = [f"<li>{html.escape(WHAT[name])}.</li>" for name in missing]
    parts = [f"<p>{html.escape(lead)} What each would show:</p><ul>{''.join(items)}</ul>"]
    markdown = [lead + " What each would show:", "", *(f"- {WHAT[name]}." for name in missing), ""]
    if "label-budgets" in missing and "label_budgets" not in additions:
        note = (f"Label budgets are not offered: the cells learned from {BUDGETS[1]} or fewer training photos per "
                "class, too few for a curve below `all`.")
        parts.append(f"<p>{html.escape(note)}</p>")
        markdown += [note, ""]
    if snippet:
        text = "Add these lines to the run's config" + (" (they replace its `strategies`):"
                                                          if "strategies" in additions else ":")
        parts += [f"<p>{html.escape(text)}</p>", f"<pre class=\"snippet\">{html.escape(snippet)}</pre>",
                  "<details class=\"fuller\"><summary>The whole config with them (save as fuller.yaml)</summary>"
                  f"<pre>{html.escape(whole)}</pre></details>"]
        markdown += [text, "", "```yaml", snippet.rstrip(), "```", ""]
    parts.append("<p>Then:</p><pre class=\"commands\">" + html.escape("\n".join(commands)) + "</pre>")
    markdown += ["Then:", "", "```sh", *commands, "```"]
    answer = (f"This report leaves out {listed}: "
              "\"Sections a fuller config adds\" gives the config and commands that add them.")
    return Section(ID, "Sections a fuller config adds", "\n".join(parts), "\n".join(markdown), answers=[answer])


def config_additions(run: RunData, missing: list[str]) -> dict[str, Any]:
    """The config keys that add the missing sections: ``strategies`` (the run's, plus the compress ones),
    ``compress`` and ``label_budgets``; empty when only a command is needed."""
    names = [_strategy_name(entry) for entry in run.config.get("strategies") or []]
    additions: dict[str, Any] = {}
    if "compression" in missing:
        extra = [registry.compress.NAME] + ([registry.compress_toptune.NAME] if registry.toptune.NAME in names else [])
        additions["strategies"] = [_compact(entry) for entry in run.config.get("strategies") or []] + extra
        additions[registry.compress.NAME] = {"methods": list(METHODS)}
    budgets = label_budgets(run)
    if "label-budgets" in missing and len(budgets) >= 2:  # one budget and ``all`` draw no curve
        additions["label_budgets"] = {"budgets": [*budgets, "all"], "subsets": SUBSETS}
    return additions


def label_budgets(run: RunData) -> list[int]:
    """``BUDGETS`` below the fewest training photos per class any cell learned from; the first two when the run
    records none (the bench then trains a small class on all its photos)."""
    per_class = [float(c.details["train"]) / float(c.details["classes"]) for c in run.cells
                 if c.status == "ok" and isinstance(c.details.get("train"), int | float)
                 and isinstance(c.details.get("classes"), int | float) and c.details["classes"]]
    if not per_class:
        return list(BUDGETS[:2])
    return [b for b in BUDGETS if b < min(per_class)]


def fuller_config(config: dict[str, Any], additions: dict[str, Any]) -> dict[str, Any]:
    """The run's config (``config.json``) as one would write it (the values that differ from the bench's defaults)
    with ``additions`` in place: what ``shelfsight bench`` reruns, the cells already stored read back."""
    whole = minimal(config)
    whole.update(copy.deepcopy(additions))
    return whole


def minimal(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the values equal to the defaults (a dumped config holds every field, some of which,
    such as ``toptune.seed``, the config refuses to be given); the list entries without their unset fields."""
    from shelfsight.bench.config import BenchConfig

    try:
        defaults = BenchConfig.model_validate({key: config[key] for key in ("models", "datasets")}).model_dump(
            mode="json")
    except (KeyError, ValueError):
        return copy.deepcopy(config)
    return {key: _differs(value, defaults.get(key)) for key, value in config.items()
            if key in ("name", "models", "datasets") or value != defaults.get(key)}


def _differs(value: Any, default: Any) -> Any:
    if isinstance(value, dict) and isinstance(default, dict):
        return {k: _differs(v, default.get(k)) for k, v in value.items() if v != default.get(k)}
    if isinstance(value, list):
        return [_compact(entry) for entry in value]
    return copy.deepcopy(value)


def _commands(run: RunData, missing: list[str], has_config: bool) -> list[str]:
    run_dir = shlex.quote(str(run.run_dir))
    commands = [f"shelfsight bench fuller.yaml --run-dir {run_dir}"] if has_config else []
    if "duplicates" in missing and (target := _duplicates_target(run)) is not None:
        source, model = target
        commands.append(f"shelfsight duplicates {shlex.quote(source)} --model {shlex.quote(model)} "
                        f"--output {shlex.quote(str(run.run_dir / 'duplicates'))}")
    return [*commands, f"shelfsight report {run_dir}"] if commands else []


def _duplicates_target(run: RunData) -> tuple[str, str] | None:
    """The first dataset (its source, else its name) and the first pre-trained model of the config."""
    datasets = run.config.get("datasets") or []
    models = [m for m in run.config.get("models") or [] if not isinstance(m, dict) or m.get("pretrained", True)]
    if not datasets or not models:
        return None
    dataset, model = datasets[0], models[0]
    source = dataset if isinstance(dataset, str) else str(dataset.get("source") or dataset["name"])
    return source, model if isinstance(model, str) else str(model["name"])


def _strategy_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry.get("name", ""))


def _compact(entry: Any) -> Any:
    """A strategy entry as one would write it: its name alone when it has no filter."""
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        return entry
    kept = {key: value for key, value in entry.items() if value is not None}
    return kept["name"] if set(kept) == {"name"} else kept
