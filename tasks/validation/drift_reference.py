"""The drift reference: the statistics of the last version of each source that passed.

``data/reference_stats.json`` is small and git-tracked, so a data version and its
reference travel together. Kept per source name and source, so a folder the pipeline has
never seen has no previous version (a user's photos are not judged against CIFAR's colours).
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.core.atomic import write_text
from tasks.validation.expectations import STAT_COLUMNS
from tasks.validation.report import DataValidationError


def load_reference(path: Path | None, name: str, source: str) -> dict | None:
    """The statistics of the last version of ``source`` that passed, if any.

    References are kept per source: a folder the pipeline has never seen has no
    previous version, so a user's own photos are not judged against CIFAR's colours.
    """
    if path is None or not path.exists():
        return None
    try:
        entry = json.loads(path.read_text()).get(name, {}).get(source)
        for column in STAT_COLUMNS if entry is not None else []:
            float(entry["statistics"][column])  # a hand-edited file must still hold numbers
        return entry
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataValidationError(f"{path}: not a valid drift reference ({type(err).__name__}: {err}); fix or delete it") from None



def save_reference(path: Path, name: str, source: str, images: int, statistics: dict[str, float]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(name, {})[source] = {"images": images, "statistics": statistics}
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

