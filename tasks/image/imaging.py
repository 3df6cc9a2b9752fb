"""Reading one image file safely: the facts validation needs, and the RGB conversion
training uses. No pandas, no MLOps imports: this module is what worker processes load.

Every fault of a file is returned, never raised: a dump of 100,000 files must not stop
at the first bad one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, ImageStat, UnidentifiedImageError

# A truncated file must fail to decode, not come back with grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Which conversion (a ``validate.convert`` entry) makes a mode trainable as RGB.
# Modes missing here (F, LAB, HSV, YCbCr, ...) are never accepted.
MODE_CONVERSIONS: dict[str, str | None] = {
    "RGB": None,
    "L": "grayscale",
    "1": "grayscale",
    "LA": "alpha",
    "RGBA": "alpha",
    "P": "palette",
    "PA": "palette",
    "CMYK": "cmyk",
    "I;16": "high_bit_depth",
    "I;16B": "high_bit_depth",
    "I;16L": "high_bit_depth",
    "I": "high_bit_depth",  # how 16-bit PNGs open in some Pillow versions
}
CONVERSIONS = ("grayscale", "alpha", "palette", "cmyk", "high_bit_depth", "resize")

# Read-level faults, in the order they are checked.
READ_FAULTS = (
    "link_outside",
    "unsafe_path",
    "broken_link",
    "bad_filename",
    "unreadable",
    "empty",
    "not_an_image",
    "bomb",
    "truncated",
    "decode_error",
)

_SIGNATURES = [  # (offset, magic, format): enough to tell an image that PIL cannot read from a non-image
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WEBP"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
]


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce, or None."""
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def describe_content(head: bytes) -> str:
    """A few words on what a non-image file holds, for the report."""
    sample = head[:512].lstrip()
    if sample[:1] == b"<":
        return "HTML/XML text"
    try:
        sample.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown binary data"


def _ends_early(fmt: str | None, size: int, head: bytes, tail: bytes) -> bool | None:
    """True when the file is shorter than its own header says, or lacks its end marker.

    None for formats without such a check (TIFF, ...).
    """
    if fmt == "PNG":
        return b"IEND" not in tail
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail.rstrip(b"\x00")[-2:]
    if fmt == "WEBP":  # RIFF header: little-endian payload size at bytes 4..8
        return int.from_bytes(head[4:8], "little") + 8 > size
    if fmt == "BMP":  # file size at bytes 2..6
        return int.from_bytes(head[2:6], "little") > size
    if fmt == "GIF":
        return not tail.rstrip(b"\x00").endswith(b";")
    return None


def _bit_depth(fmt: str | None, mode: str, head: bytes) -> int:
    if fmt == "PNG" and head[12:16] == b"IHDR":
        return head[24]  # PNG stores bits per sample in its header; Pillow reads 16-bit RGB as 8-bit RGB
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    return 32 if mode in ("I", "F") else 8


def to_rgb(image: Image.Image) -> Image.Image:
    """Any accepted mode -> 8-bit RGB, upright (EXIF orientation applied)."""
    with contextlib.suppress(Exception):  # a damaged EXIF block is not worth losing the pixels over
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        # 16-bit samples: scale 0..65535 to 0..255 (Pillow's own conversion clips instead).
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if (image.mode == "P" and "transparency" in image.info) or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Transparent pixels carry arbitrary colours; show them on white as a viewer would.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def hash_file(path: Path) -> tuple[str, int, bytes, bytes]:
    """(sha256, size, first 64 bytes, last 64 bytes), reading in chunks: files can be huge."""
    digest, size, head, tail = hashlib.sha256(), 0, b"", b""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            if not head:
                head = chunk[:64]
            digest.update(chunk)
            size += len(chunk)
            tail = (tail + chunk)[-64:]
    return digest.hexdigest(), size, head, tail


def describe_file(path: Path, relpath: str, max_pixels: int) -> dict:
    """The facts about one file: identity, content hash, header, decode result, RGB statistics.

    ``fault`` is set for read-level faults (see READ_FAULTS) and ``decode_error`` says why.
    """
    row: dict = {"path": relpath, "fault": None, "decode_error": None}
    try:
        info = os.stat(path)
        row.update(bytes=info.st_size, mtime_ns=info.st_mtime_ns)
        sha256, size, head, tail = hash_file(path)
    except OSError as err:
        return row | {"fault": "unreadable", "decode_error": f"cannot read: {err.strerror or err}"}
    if size == 0:
        return row | {"bytes": 0, "fault": "empty", "decode_error": "empty file (0 bytes)"}
    row.update(bytes=size, sha256=sha256)
    announced = sniff(head)
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's advice (e.g. palette transparency) is not a fault
            # Over the limit Pillow warns, over twice the limit it raises: both are the same bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                fmt = "JPEG" if image.format == "MPO" else image.format  # camera JPEGs open as MPO
                row.update(format=fmt, mode=image.mode, width=image.width, height=image.height)
                row.update(channels=len(image.getbands()), bit_depth=_bit_depth(fmt, image.mode, head))
                image.load()  # decodes every pixel: a truncated file fails here
                if image.mode in MODE_CONVERSIONS:  # other modes are refused anyway: no statistics
                    stats = ImageStat.Stat(to_rgb(image))
                    for channel, mean, std in zip("rgb", stats.mean, stats.stddev, strict=True):
                        row[f"mean_{channel}"], row[f"std_{channel}"] = mean / 255, std / 255
        # Pillow reads a PNG cut just before its IEND chunk without complaint; other formats
        # fail in load() when cut, and a JPEG may legitimately carry data after its end marker.
        if fmt == "PNG" and _ends_early(fmt, size, head, tail):
            row.update(fault="truncated", decode_error="PNG file ends before its IEND chunk")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        row.update(fault="bomb", decode_error=f"decompression bomb guard: {count}, above validate.max_pixels={max_pixels:,}; not decoded")
    except UnidentifiedImageError:
        if announced is None:
            row.update(fault="not_an_image", decode_error=f"not an image: the content is {describe_content(head)}")
        elif _ends_early(announced, size, head, tail):
            row.update(format=announced, fault="truncated", decode_error=f"{announced} file cut short: header unreadable")
        else:
            row.update(format=announced, fault="decode_error", decode_error=f"{announced} data that cannot be read")
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for damaged data; all are faults of the file
        message = f"{type(err).__name__}: {err}"
        # Pillow says "truncated" whenever data runs out, also inside a damaged segment of a
        # complete file; the end marker tells a cut download from corrupt content.
        cut = _ends_early(row.get("format") or announced, size, head, tail)
        if cut is None:
            cut = isinstance(err, EOFError) or "truncat" in message.lower()
        row.update(fault="truncated" if cut else "decode_error", decode_error=message)
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return row


def describe_files(root: str, relpaths: list[str], max_pixels: int) -> list[dict]:
    """A chunk of :func:`describe_file` calls: the unit of work of a worker process."""
    return [describe_file(Path(root) / relpath, relpath, max_pixels) for relpath in relpaths]
