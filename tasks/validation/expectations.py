"""The data-quality rules in one place.

Two views of the same rules, derived from the same config so they agree:

- the Great Expectations suite, which decides pass or fail on the per-image table;
- the ``fault`` of each row (the first rule it breaks), which names the file in the
  report and in the quarantine list.
"""

from __future__ import annotations

import pandas as pd
from PIL import Image

from tasks.core.config import ValidateConfig
from tasks.image.imaging import MODE_CONVERSIONS, READ_FAULTS

# Every fault a file can have, in the order they are checked (a file gets the first).
FAULTS = READ_FAULTS + ("bad_format", "bad_mode", "too_small", "too_large", "wrong_size", "blank", "duplicate")
STAT_COLUMNS = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"]


class Rules:
    """What ``validate`` accepts, for one config and training size (None: any size)."""

    def __init__(self, cfg: ValidateConfig, image_size: int | None = None):
        self.cfg, self.image_size = cfg, image_size
        self.resize = image_size is None or "resize" in cfg.convert
        self.modes = [mode for mode, conversion in MODE_CONVERSIONS.items() if conversion is None or conversion in cfg.convert]
        self.channels = sorted({Image.getmodebands(mode) for mode in self.modes})
        # Palette, 1-bit and grayscale PNGs store 1-8 bits per sample; all decode to 8-bit.
        self.bit_depths = [1, 2, 4, 8] + ([16] if "high_bit_depth" in cfg.convert else [])

    def suite(self, name: str, reference: dict[str, float] | None):
        """The GX expectation suite, built as code: reviewable in a diff, versioned with the repo."""
        import great_expectations as gx
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
            tolerance = cfg.drift_tolerance
            expectations += [
                gxe.ExpectColumnMeanToBeBetween(
                    column=column, min_value=reference[column] - tolerance, max_value=reference[column] + tolerance
                )
                for column in STAT_COLUMNS
            ]
        suite = gx.ExpectationSuite(name=f"{name}_images")
        for expectation in expectations:
            suite.add_expectation(expectation)
        return suite

    def assign_faults(self, table: pd.DataFrame) -> pd.DataFrame:
        """Add ``std_max``, ``fault`` (first broken rule), ``detail`` and ``convert`` to the facts table."""
        cfg, table = self.cfg, table.copy()
        table["std_max"] = table[["std_r", "std_g", "std_b"]].astype(float).max(axis=1, skipna=False)
        # object, not float: a table with no fault yet holds only missing values
        table["fault"], table["detail"] = table["fault"].astype(object), table["decode_error"].astype(object)
        width, height = table["width"].astype(float), table["height"].astype(float)
        side_min, side_max = pd.concat([width, height], axis=1).min(axis=1), pd.concat([width, height], axis=1).max(axis=1)

        def mark(fault: str, mask: pd.Series, detail) -> None:
            rows = mask.fillna(False).astype(bool) & table["fault"].isna()
            if rows.any():
                table.loc[rows, "fault"] = fault
                table.loc[rows, "detail"] = table[rows].apply(detail, axis=1)

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
