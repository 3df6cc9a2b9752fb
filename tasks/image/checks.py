"""What validation makes of an image source: the per-image rules, in two views derived from the
same config so they agree, and how a source becomes a per-image table.

- the Great Expectations suite, which decides pass or fail on the per-image table (:meth:`ImageChecks.expectations`);
- the ``fault`` of each row (the first rule it breaks), which names the file in the report
  and in the quarantine list (:meth:`ImageChecks.assign_faults`).

:class:`ImageChecks` is images' side of the one validation path (tasks/validation/source_check.py's
``run_checks``): it walks a source without leaving it and describes every image file
(tasks/image/table.py: cached, in parallel), and a labeled set must also have a usable
structure (two classes or more, no empty split).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.core.config import ValidateConfig
from tasks.image.imaging import MODE_CONVERSIONS, READ_FAULTS
from tasks.image.sources import MIN_PER_CLASS, open_source, scan_images
from tasks.image.table import TableCache, build_table
from tasks.validation.source_check import Checks, Unit, mark_fault

log = logging.getLogger(__name__)

# Every fault a file can have, in the order they are checked (a file gets the first; READ_FAULTS
# come first, from reading the file), and what it means.
IMAGES = Unit(
    name="images",
    rows="image files",
    key="path",
    faults={
        "link_outside": "a link whose target is outside the data root; never opened",
        "unsafe_path": "an archive member with an absolute or ../ path; never unpacked",
        "broken_link": "a link to nothing, or a loop",
        "bad_filename": "a name that is not valid UTF-8",
        "unreadable": "no permission, or an I/O error",
        "empty": "0 bytes",
        "not_an_image": "text, HTML or other non-image content",
        "bomb": "more pixels than validate.max_pixels; never decoded",
        "truncated": "cut short",
        "decode_error": "image data that cannot be decoded",
        "bad_format": "a format not in validate.allowed_formats",
        "bad_mode": "a mode or bit depth that is not converted",
        "too_small": "a side below validate.min_side",
        "too_large": "a side above validate.max_side",
        "wrong_size": "not data.image_size square, and resizing is off",
        "blank": "a constant frame",
        "duplicate": "the same bytes as an earlier file",
    },
)
assert tuple(IMAGES.faults)[: len(READ_FAULTS)] == READ_FAULTS
STAT_COLUMNS = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")


class ImageChecks(Checks):
    """What ``validate`` accepts of images, for one config and training size (None: any size).

    ``image_size``: the training size (for ``resize`` in ``validate.convert``); ``labeled``: also
    check the class structure; ``downloads``: where torchvision sources land; ``cache_dir``: where
    the per-image table cache lives (None: no cache).
    """

    unit = IMAGES
    gx_columns = ("path", "format", "mode", "width", "height", "channels", "bit_depth", "sha256", "decode_error", "std_max", *STAT_COLUMNS)
    gx_floats = ("width", "height", "channels", "bit_depth")
    stat_columns = STAT_COLUMNS

    def __init__(
        self,
        cfg: ValidateConfig,
        image_size: int | None = None,
        *,
        labeled: bool = False,
        downloads: Path | None = None,
        cache_dir: Path | None = None,
    ):
        self.cfg, self.image_size, self.labeled = cfg, image_size, labeled
        self.downloads, self.cache_dir = downloads, cache_dir
        self.class_folders: list[str] = []  # of a labeled source, found by describe
        self.resize = image_size is None or "resize" in cfg.convert
        self.modes = [mode for mode, conversion in MODE_CONVERSIONS.items() if conversion is None or conversion in cfg.convert]
        self.channels = sorted({Image.getmodebands(mode) for mode in self.modes})
        # Palette, 1-bit and grayscale PNGs store 1-8 bits per sample; all decode to 8-bit.
        self.bit_depths = [1, 2, 4, 8] + ([16] if "high_bit_depth" in cfg.convert else [])

    def describe(self, source, name, key, reference):
        refused: list = []
        with open_source(source, self.downloads, refused) as root:
            listing = scan_images(root, refused)
            log.info("%s: describing %d image files under %s", name, len(listing.files), source)
            cache = TableCache(self.cache_dir / f"{name}.parquet" if self.cache_dir else None, key, self.cfg.max_pixels)
            facts = build_table(root, listing, self.cfg.max_pixels, cache, self.cfg.workers)
            self.class_folders = class_folders(root) if self.labeled else []
        return self.assign_faults(facts), listing.skipped

    def expectations(self, reference: dict | None) -> list:
        """The GX suite's expectations, built as code: reviewable in a diff, versioned with the repo."""
        import great_expectations.expectations as gxe

        cfg = self.cfg
        expectations = [
            gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_images),
            gxe.ExpectColumnValuesToBeNull(column="decode_error"),  # decodable, never a link out, not a bomb
            gxe.ExpectColumnValuesToBeInSet(column="format", value_set=cfg.allowed_formats),
            gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=self.modes),
            gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=self.channels),
            gxe.ExpectColumnValuesToBeInSet(column="bit_depth", value_set=self.bit_depths),
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_side, max_value=cfg.max_side),
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_side, max_value=cfg.max_side),
            gxe.ExpectColumnValuesToBeBetween(column="std_max", min_value=cfg.blank_std, strict_min=True),  # not blank
        ]
        if not self.resize:
            expectations += [gxe.ExpectColumnValuesToBeInSet(column=side, value_set=[self.image_size]) for side in ("width", "height")]
        if not cfg.allow_duplicates:
            expectations.append(gxe.ExpectColumnValuesToBeUnique(column="sha256"))
        if reference and cfg.drift_tolerance is not None:
            # Drift: the dataset's mean of per-image channel means and stds, against the last validated version.
            tolerance, stats = cfg.drift_tolerance, reference["statistics"]
            expectations += [
                gxe.ExpectColumnMeanToBeBetween(column=column, min_value=stats[column] - tolerance, max_value=stats[column] + tolerance)
                for column in STAT_COLUMNS
            ]
        return expectations

    def assign_faults(self, table: pd.DataFrame) -> pd.DataFrame:
        """Add ``std_max``, ``fault`` (first broken rule), ``detail`` and ``convert`` to the facts table."""
        cfg, table = self.cfg, table.copy()
        table["std_max"] = table[["std_r", "std_g", "std_b"]].astype(float).max(axis=1, skipna=False)
        # object, not float: a table with no fault yet holds only missing values
        table["fault"], table["detail"] = table["fault"].astype(object), table["decode_error"].astype(object)
        width, height = table["width"].astype(float), table["height"].astype(float)
        side_min, side_max = pd.concat([width, height], axis=1).min(axis=1), pd.concat([width, height], axis=1).max(axis=1)
        mark = partial(mark_fault, table)

        mode_ok = table["mode"].isin(self.modes) & table["bit_depth"].isin(self.bit_depths)
        mark(
            "bad_format",
            table["format"].notna() & ~table["format"].isin(cfg.allowed_formats),
            lambda r: f"format {r['format']} not in validate.allowed_formats",
        )
        mark("bad_mode", table["mode"].notna() & ~mode_ok, self._mode_detail)
        mark(
            "too_small", side_min < cfg.min_side, lambda r: f"{r['width']}x{r['height']} px, a side below validate.min_side={cfg.min_side}"
        )
        mark(
            "too_large", side_max > cfg.max_side, lambda r: f"{r['width']}x{r['height']} px, a side above validate.max_side={cfg.max_side}"
        )
        if not self.resize:
            wrong = (width != self.image_size) | (height != self.image_size)
            mark(
                "wrong_size",
                wrong,
                lambda r: f"{r['width']}x{r['height']} px, not the training size {self.image_size} (resize is not in validate.convert)",
            )
        mark("blank", table["std_max"] <= cfg.blank_std, lambda r: f"blank: every channel's std <= validate.blank_std={cfg.blank_std}")
        if not cfg.allow_duplicates:
            first = table.drop_duplicates("sha256").dropna(subset=["sha256"]).set_index("sha256")["path"]
            copies = table["sha256"].notna() & table.duplicated("sha256", keep="first")
            mark("duplicate", copies, lambda r: f"same bytes as {first[r['sha256']]}")
        table["convert"] = [self._conversions(row) for row in table.to_dict("records")]
        return table

    def _mode_detail(self, row) -> str:
        conversion = MODE_CONVERSIONS.get(row["mode"], "none")
        if row["mode"] in self.modes:
            if row["bit_depth"] == 16:
                return "16-bit samples: high_bit_depth is not in validate.convert"
            return f"{row['bit_depth']}-bit samples have no conversion to 8-bit RGB"
        if conversion == "none":
            return f"mode {row['mode']} has no conversion to RGB"
        return f"mode {row['mode']}: {conversion} is not in validate.convert"

    def _conversions(self, row) -> str | None:
        """What ingest will do to an accepted image on the way to RGB at the training size."""
        if pd.notna(row["fault"]) or pd.isna(row["mode"]):
            return None
        steps = [MODE_CONVERSIONS.get(row["mode"])]
        if row["bit_depth"] == 16 and row["mode"] in ("RGB", "RGBA"):
            steps.append("high_bit_depth")
        if self.image_size is not None and (row["width"] != self.image_size or row["height"] != self.image_size):
            steps.append("resize")
        return "+".join(s for s in steps if s) or None

    def converted(self, good):
        return dict(Counter(step for steps in good["convert"].dropna() for step in steps.split("+")))

    def structure_problem(self, good):
        return labeled_structure_problem(list(good["path"]), self.class_folders) if self.labeled else None


def class_folders(root: Path) -> list[str]:
    """The class folders of a labeled root, relative to it: ``train/<class>`` and ``test/<class>``
    when both halves exist, else ``<class>`` (hidden folders are not classes)."""
    halves = [root / "train", root / "test"] if (root / "train").is_dir() and (root / "test").is_dir() else [root]
    return sorted(
        folder.relative_to(root).as_posix()
        for half in halves
        for folder in half.iterdir()
        if folder.is_dir() and not folder.name.startswith(".")
    )


def labeled_structure_problem(paths: list[str], folders: Iterable[str] = ()) -> str | None:
    """What makes a labeled set unusable for evaluation, from its accepted files' relative
    paths and its class ``folders``: fewer than two classes, a train/test split with an empty
    side, or a class the probe cannot both learn and be scored on.

    The rule per class: with ``train/`` and ``test/`` given, at least one accepted image in
    each of them; without (ingest makes the split), at least two (one for each side). An
    empty class folder is named as such; it would otherwise be dropped without a word."""
    parts = [p.split("/") for p in paths]
    split = any(len(p) > 2 and p[0] in ("train", "test") for p in parts)
    depth = 2 if split else 1  # a class folder: train/<class> or <class>
    per_folder = Counter("/".join(p[:depth]) for p in parts if len(p) > depth)
    empty = [f for f in folders if not per_folder[f]]
    if empty:
        return f"class folder(s) with no accepted images: {', '.join(empty[:5])}; add images or remove the folder"
    if split:
        classes = {side: {p[1] for p in parts if len(p) > 2 and p[0] == side} for side in ("train", "test")}
        empty = [side for side, found in classes.items() if not found]
        if empty:
            return f"the {' and '.join(empty)} split has no images"
        found = classes["train"] | classes["test"]
        missing = [f"{side}/{name}" for side in ("train", "test") for name in sorted(found - classes[side])]
        if missing:
            listed = ", ".join(missing[:5])
            return f"class(es) without accepted images in one half of the split: {listed} (each class needs one in train and one in test)"
    else:
        found = {p[0] for p in parts if len(p) > 1}
        few = sorted(name for name in found if per_folder[name] < MIN_PER_CLASS)
        if few:
            listed = ", ".join(f"{name} ({per_folder[name]})" for name in few[:5])
            return (
                f"class(es) with fewer than {MIN_PER_CLASS} accepted images: {listed}; ingest splits each class into train "
                f"and test, so each needs at least {MIN_PER_CLASS}"
            )
    if len(found) < 2:
        return f"a labeled set needs at least two class folders, found {sorted(found) or 'none'}"
    return None
