"""Builds a messy unlabeled dump: real CIFAR images plus one file per fault class.

``EXPECTED`` is the fault each built file must get under the default ``validate`` params
(None: accepted); ``SKIPPED`` the entries that must only be counted.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

UNICODE_NAME = "ünïcödé 画像 with spaces.jpg"
NON_UTF8_NAME = os.fsdecode(b"caf\xe9 latin-1.jpg")  # a name that is not valid UTF-8

EXPECTED: dict[str, str | None] = {
    "corrupt.jpg": "decode_error",
    "truncated.jpg": "truncated",
    "truncated_half.png": "truncated",
    "no_iend.png": "truncated",
    "empty.jpg": "empty",
    "page.jpg": "not_an_image",
    "notes.png": "not_an_image",
    "bomb_header.png": "bomb",
    "bomb_zeros.png": "bomb",
    "anim.gif": "bad_format",
    "scan.tif": "bad_format",
    "tiny.png": "too_small",
    "huge.png": "too_large",
    "black.png": "blank",
    "white.jpg": "blank",
    "zz_copy.jpg": "duplicate",  # same bytes as good/00000.jpg
    "zz_link_inside.jpg": "duplicate",  # a link inside the root, to good/00001.jpg
    "outside.jpg": "link_outside",
    "outside_folder": "link_outside",
    "dangling.jpg": "broken_link",
    # convertible: accepted and converted
    "gray.png": None,
    "rgba.png": None,
    "palette.png": None,
    "cmyk.jpg": None,
    "deep16.png": None,
    "rgb16.png": None,
    "wide.png": None,
    "png_named.jpg": None,  # a PNG with a .jpg name: the content decides
    f"nested/deeper/{UNICODE_NAME}": None,
    "caf\\xe9 latin-1.jpg": "bad_filename",  # reported with the byte escaped; never opened
}
# Under validate.convert: [] the convertible cases fail instead.
EXPECTED_WITHOUT_CONVERT = {
    "gray.png": "bad_mode",
    "rgba.png": "bad_mode",
    "palette.png": "bad_mode",
    "cmyk.jpg": "bad_mode",
    "deep16.png": "bad_mode",
    "rgb16.png": "bad_mode",
    "wide.png": "wrong_size",
    # too small/large images break the size bounds before the training size
}
SKIPPED = {"hidden": 2, "other_extension": 2, "special_file": 1}
GOOD = 24  # plain CIFAR images in good/ (and 1 each under the two odd names)


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written by hand: for headers Pillow would not write (16-bit RGB, bombs)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def build(root: Path, good_images: list[Path], outside: Path) -> Path:
    """Fill ``root`` with the dump; ``outside`` is a folder beside it for the links to point at."""
    good = root / "good"
    good.mkdir(parents=True)
    for path in good_images[:GOOD]:
        shutil.copy(path, good / path.name)
    first, second = sorted(good.iterdir())[:2]
    jpeg, png = first.read_bytes(), encoded(noise(32, 32, seed=1), "PNG")
    (root / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(good_images[GOOD], root / "nested" / "deeper" / UNICODE_NAME)
    shutil.copy(good_images[GOOD + 1], root / NON_UTF8_NAME)

    files = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(600) + b"\xff\xd9",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated_half.png": png[: len(png) // 2],
        "no_iend.png": png[:-12],
        "empty.jpg": b"",
        "page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "notes.png": b"just some text saved with an image name\n",
        # A 30000 x 30000 header: the guard must refuse it before reading any pixel data.
        "bomb_header.png": png_bytes(30000, 30000, 8, 0, b"\x00" * 100),
        # A real bomb: 12000 x 12000 1-bit pixels, all zeros, in about 20 kB.
        "bomb_zeros.png": png_bytes(12000, 12000, 1, 0, b"\x00" * (12000 * (1 + 12000 // 8))),
        "anim.gif": encoded(noise(32, 32, seed=2), "GIF"),
        "scan.tif": encoded(noise(32, 32, seed=3), "TIFF"),
        "tiny.png": encoded(noise(4, 4, seed=4), "PNG"),
        "huge.png": encoded(noise(4100, 10, seed=5), "PNG"),
        "black.png": encoded(Image.new("RGB", (32, 32)), "PNG"),
        "white.jpg": encoded(Image.new("RGB", (48, 48), "white"), "JPEG"),
        "zz_copy.jpg": jpeg,
        "gray.png": encoded(noise(32, 32, "L", seed=6), "PNG"),
        "rgba.png": encoded(noise(32, 32, "RGBA", seed=7), "PNG"),
        "palette.png": encoded(noise(32, 32, seed=8).convert("P"), "PNG"),
        "cmyk.jpg": encoded(noise(32, 32, seed=9).convert("CMYK"), "JPEG"),
        "deep16.png": encoded(Image.fromarray(np.random.default_rng(10).integers(0, 65535, (32, 32), dtype=np.uint16)), "PNG"),
        "rgb16.png": png_bytes(
            32,
            32,
            16,
            2,
            b"".join(
                b"\x00" + np.random.default_rng(11 + y).integers(0, 65535, 96, dtype=np.uint16).astype(">u2").tobytes() for y in range(32)
            ),
        ),
        "wide.png": encoded(noise(64, 40, seed=12), "PNG"),
        "png_named.jpg": encoded(noise(32, 32, seed=13), "PNG"),
        ".hidden.jpg": jpeg,
        "readme.txt": b"not an image extension",
        "Thumbs.db": b"\x00" * 10,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(jpeg)
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    outside.mkdir(exist_ok=True)
    (outside / "secret.jpg").write_bytes(second.read_bytes())
    (root / "outside.jpg").symlink_to(outside / "secret.jpg")
    (root / "outside_folder").symlink_to(outside, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "zz_link_inside.jpg").symlink_to(second)
    return root


def good_paths(root: Path) -> list[str]:
    """Relative paths of the files that must be accepted."""
    plain = sorted(f"good/{p.name}" for p in (root / "good").iterdir())
    return sorted(plain + [name for name, fault in EXPECTED.items() if fault is None])
