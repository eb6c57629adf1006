"""The plan side of label-efficiency curves (``bench.label_budgets`` holds the curves and break-even tests):
the config's ``label_budgets`` section and what a ``KIND/N`` cell adds to its key (``bench.plan`` adds the cells)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shelfsight.bench import strategies as registry
from shelfsight.bench.results import Cell
from shelfsight.bench.strategies.base import split_budget

ALL = "all"
CURVES_FILE = "label-budgets.csv"
BREAK_EVEN_FILE = "label-budgets-tests.csv"
VALIDATION = "fixed: the run's validation part, set aside before the budget is drawn"
NESTED_DRAW = "nested-permutation-v1"
"""The subset draw (``adapt.splits.at_most_per_class``); part of a budget cell's identity."""
RETRIEVAL_METRIC = "mMP@5"
CLASSIFICATION_METRIC = "accuracy"
ZERO_LABEL = 0
"""The ``budget`` of the reference rows (pre-trained embedding, zero-shot tagging) in the curves table."""


class LabelBudgets(BaseModel):
    """The config's ``label_budgets`` section (a list is shorthand for ``budgets``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: tuple[int | Literal["all"], ...] = (1, 2, 5, 10, 25, "all")
    subsets: int = Field(default=3, ge=1, description="Subset seeds per budget: seed, seed + 1, ...")
    strategies: tuple[str, ...] | None = None
    """Default: the label-learning strategies the config runs for the model and dataset whose ``budget_default``
    is set (fine-tuning's is not: it is costly, name it to have it)."""
    models: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    protocols: Literal["main", "all"] = "main"
    """Retrieval protocols a budget cell scores: the dataset's main one (the curves' protocol; a third of the
    scoring on the Grocery Store Dataset's three) or all of them."""

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        numbers = [b for b in value if b != ALL]
        if any(not isinstance(b, int) or b < 1 for b in numbers):
            raise ValueError(f"budgets are labelled photos per class (integers >= 1) or 'all', got {list(value)}")
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"budgets repeat a value: {list(value)}")
        return (*sorted(int(b) for b in numbers), *((ALL,) if ALL in value else ()))

    @field_validator("strategies")
    @classmethod
    def _budgeted(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        allowed = registry.budgeted_names()
        for name in value or ():
            if name not in allowed:
                raise ValueError(f"strategy {name!r} does not learn from training labels; label budgets apply "
                                 f"to {', '.join(allowed)}")
        return value

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.budgets if b != ALL)

    def subset_seeds(self, first: int) -> tuple[int, ...]:
        return tuple(first + r for r in range(self.subsets))

    def applies(self, model: str, dataset: str) -> bool:
        """Whether the section limits the model labelled ``model`` on ``dataset``."""
        return ((self.models is None or model in self.models)
                and (self.datasets is None or dataset in self.datasets))


def label_budget_identity(strategy: str, section: LabelBudgets | None) -> dict[str, Any]:
    """What a label-budget cell adds to its key (nothing for other cells)."""
    budget = split_budget(strategy)[1]
    if budget is None:
        return {}
    protocols = section.protocols if section is not None else "all"
    return {"label_budget": {"per_class": budget, "validation": VALIDATION, "draw": NESTED_DRAW,
                             "protocols": protocols}}


def scored_protocols(strategy: str, section: LabelBudgets | None, declared: list[str]) -> tuple[str, ...] | None:
    """The retrieval protocols a cell scores, of the dataset's ``declared`` ones: None (all) but for a
    label-budget cell of a section that keeps to the main one."""
    if split_budget(strategy)[1] is None or section is None or section.protocols == "all" or not declared:
        return None
    return (declared[0],)


def is_budget_cell(cell: Cell) -> bool:
    return split_budget(cell.strategy)[1] is not None


# ---------------------------------------------------------------------------------------------- tables
