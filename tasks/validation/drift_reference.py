"""The drift reference: the statistics of the last version of each source that passed.

``data/reference_stats.json`` is small and git-tracked, so a data version and its
reference travel together. Kept per source name and source, so a folder the pipeline has
never seen has no previous version (a user's photos are not judged against CIFAR's colours).
An entry holds the count of the version (``images``, ``documents``), its ``statistics``, and
whatever else the modality's drift checks need (text: the vocabulary).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tasks.core.atomic import write_text
from tasks.validation.report import DataValidationError


def load_reference(path: Path | None, name: str, source: str, check: Callable[[dict], None]) -> dict | None:
    """The entry of the last version of ``source`` that passed, if any; ``check(entry)`` raises
    when the entry is not usable, which is a :class:`DataValidationError` naming the file."""
    if path is None or not path.exists():
        return None
    try:
        entry = json.loads(path.read_text()).get(name, {}).get(source)
        if entry is not None:
            check(entry)
        return entry
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataValidationError(f"{path}: not a valid drift reference ({type(err).__name__}: {err}); fix or delete it") from None


def save_reference(path: Path, name: str, source: str, entry: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(name, {})[source] = entry
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
