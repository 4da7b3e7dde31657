"""The lab's image: the same ~20 KB PNG from every server, and the headers it is served with."""

from __future__ import annotations

import random
import struct
import zlib

__all__ = ["IMAGE_HEADERS", "IMAGE_PATH", "lab_image"]

#: The path the app asks for (every server answers the image at any path, any query string).
IMAGE_PATH = "/img.png"

#: Headers of the image's response besides its length: ``no-store`` so that a browser asks every time.
IMAGE_HEADERS: tuple[tuple[str, str], ...] = (("Content-Type", "image/png"), ("Cache-Control", "no-store"))


def lab_image(width: int = 96, height: int = 72, seed: int = 7) -> bytes:
    """A real PNG of noise, about 20 KB (noise does not compress), the same bytes every time."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
