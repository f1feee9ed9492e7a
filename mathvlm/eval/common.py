"""Shared plumbing for the benchmark scorers: file reading with clear errors, per-category tallies,
and markdown/JSON tables. Pure Python (no JAX, no numpy) so scoring a file is fast and works anywhere."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A benchmark or predictions file is malformed; the message names the file and the record."""


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: str) -> list[dict]:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no} is not valid JSON ({e})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return records


def require(record: Any, fields: Iterable[str], path: str, record_id: Any) -> None:
    """Raise a DataError naming the file, the record id and the missing fields."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {record_id!r} is a {type(record).__name__}, expected an object")
    missing = [name for name in fields if name not in record]
    if missing:
        raise DataError(f"{path}: record {record_id!r} lacks required field(s) {missing}")


def read_record_list(path: str, fields: Iterable[str], id_field: str) -> list[dict]:
    """A JSON list of records, each required to have ``fields``; errors name the file and the record
    (by ``id_field``, or its index when that is absent)."""
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records")
    for index, record in enumerate(records):
        record_id = record.get(id_field, index) if isinstance(record, dict) else index
        require(record, fields, path, record_id)
    return records


@dataclass
class Tally:
    """Correct/total counts overall and per (dimension, category), e.g. ("task", "figure QA")."""

    correct: int = 0
    total: int = 0
    groups: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. how many records lacked an extraction

    def add(self, is_correct: bool, categories: dict[str, Any] | None = None) -> None:
        self.correct += int(bool(is_correct))
        self.total += 1
        for dimension, values in (categories or {}).items():
            # A list value (MathVista skills) counts the item once under each of its members.
            for value in values if isinstance(values, (list, tuple)) else [values]:
                cell = self.groups.setdefault(dimension, {}).setdefault(str(value), [0, 0])
                cell[0] += int(bool(is_correct))
                cell[1] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def summary(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": self.summary(), **self.notes}
        for dimension, cells in self.groups.items():
            out[dimension] = {value: {"correct": c, "total": t, "accuracy": c / t if t else 0.0}
                              for value, (c, t) in sorted(cells.items())}
        return out

    def metrics(self, prefix: str):
        """(name, value) pairs as evaluators yield them."""
        yield f"{prefix}/accuracy", self.accuracy
        for dimension, cells in self.groups.items():
            for value, (c, t) in sorted(cells.items()):
                yield f"{prefix}/{dimension}/{value}", c / t if t else 0.0


def markdown_tables(results: dict[str, Any], title: str = "") -> str:
    """One markdown table per dimension of a ``Tally.to_dict()``-shaped dict (other keys are listed)."""
    lines = [f"## {title}", ""] if title else []
    overall = results.get("overall")
    if overall:
        lines += [f"Overall: {overall['correct']}/{overall['total']} = {100 * overall['accuracy']:.2f}%", ""]
    for dimension, cells in results.items():
        if dimension == "overall":
            continue
        if isinstance(cells, dict) and cells and all(isinstance(v, dict) and "total" in v for v in cells.values()):
            lines += [f"### {dimension}", "", "| category | correct | total | accuracy |", "|---|---:|---:|---:|"]
            for value, cell in cells.items():
                lines.append(f"| {value} | {cell['correct']} | {cell['total']} | {100 * cell['accuracy']:.2f}% |")
            lines.append("")
        else:
            lines += [f"- {dimension}: {cells}"]
    return "\n".join(lines).rstrip() + "\n"


def write_tables(results: dict[str, Any], workdir: str, name: str) -> tuple[str, str]:
    """Write ``<name>.md`` and ``<name>.json`` into workdir; return both paths."""
    os.makedirs(workdir, exist_ok=True)
    md_path = os.path.join(workdir, f"{name}.md")
    json_path = os.path.join(workdir, f"{name}.json")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown_tables(results, title=name))
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    return md_path, json_path


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, cost 1), as python-Levenshtein's ``distance``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]

