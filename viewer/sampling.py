"""Which rows `inspect` shows: those of one reason or task (--reason, --task), and on the contact sheet
up to --limit of them shared between the groups the data has, so that a small reason or task is shown
beside the largest.

The groups are the values of the first of GROUP_COLUMNS that the data has: the reasons of rejected/
rows (stage 1 and stage 2), the tasks of stage-2/sft samples and packed rows, the sources of curated
pairs. Each group gets an equal share of the limit; a group with fewer rows gives what it leaves to the
others, and what does not divide evenly goes to the largest (`shares`). A group's rows are its first in
the dataset's order (files sorted by name): the choice is deterministic, and reading stops early in each
row group (viewer/rows.py). Groups are listed largest first, ties by name.
"""

from collections import Counter
from dataclasses import dataclass

from viewer.rows import Dataset

GROUP_COLUMNS = ("reason", "task", "source")


@dataclass
class Group:
    """One group's rows: its name (None when the data is not grouped), how many rows it has (those
    matching the filters) and the row numbers shown, in order."""

    name: str | None
    rows: int
    shown: list[int]


def shares(sizes: dict, limit: int) -> dict:
    """Rows per group: `limit` shared evenly, a small group's leftover going to the larger ones. Groups are
    filled smallest first (ties by name), each with its size or an even share of what is left."""
    out, left = {}, limit
    order = sorted(sizes, key=lambda name: (sizes[name], str(name)))
    for i, name in enumerate(order):
        out[name] = min(sizes[name], left // (len(order) - i))
        left -= out[name]
    return out


def where_label(where: dict[str, str]) -> str:
    """'with reason duplicate, task vqa'."""
    return "with " + ", ".join(f"{name} {value}" for name, value in where.items())


def group_column(data: Dataset) -> str | None:
    return next((c for c in GROUP_COLUMNS if c in data.schema.names), None)


def pick(data: Dataset, limit: int, where: dict[str, str], grouped: bool) -> tuple[str | None, list[Group]]:
    """(the column grouped by, the groups) of the rows to show: those matching `where` (column -> value),
    at most `limit`, shared between the groups when `grouped`, else the first. A column the data does not
    have, or a value it does not hold, is a ValueError naming the values present."""
    column = group_column(data) if grouped else None
    if column is None and not where:
        n = min(limit, data.num_rows)
        return None, [Group(None, data.num_rows, list(range(n)))]
    for name in where:
        if name not in data.schema.names:
            raise ValueError(f"--{name}: {data.path} has no {name} column")
    values = {name: data.values(name) for name in {*where, *([column] if column else [])}}
    for name, value in where.items():
        present = sorted({str(v) for v in values[name] if v is not None})
        if value not in present:
            raise ValueError(f"--{name} {value}: not in {data.path} ({name}s present: {', '.join(present) or 'none'})")
    matching = [i for i in range(data.num_rows) if all(values[name][i] == value for name, value in where.items())]
    names = values[column] if column else [None] * data.num_rows
    sizes = Counter(names[i] for i in matching) if column else {None: len(matching)}
    quota = shares(sizes, limit)
    shown: dict = {name: [] for name in sizes}
    for i in matching:
        if len(shown[names[i]]) < quota[names[i]]:
            shown[names[i]].append(i)
    order = sorted(sizes, key=lambda name: (-sizes[name], str(name)))
    return column, [Group(name, sizes[name], shown[name]) for name in order]
