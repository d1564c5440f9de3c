"""Generated inputs of bench/faults.py: photos, caption files, and a hostile corpus.

Every file of the hostile corpus lies in a folder named for its family and carries a token
`fNNNN_` at the start of its name, so it can be found again in whatever form the engine reports
the path (non-UTF-8 bytes escaped or not). Each has an expectation: `good` (must be indexed),
`bad` (must be listed as skipped, with a reason) or `either` (indexed or listed; truncations a
lenient decoder may still read, extreme aspect ratios an engine may refuse).
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TOKEN = re.compile(r"f(\d{4})_")


def draw_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A distinct RGB picture: coarse random blocks over a gradient (as tests/conftest.py)."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((width, height), Image.Resampling.BICUBIC)
    gradient = np.linspace(0, 80, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(np.asarray(image, dtype=np.float32) * 0.7 + gradient, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def write_photos(
    folder: Path, count: int, seed: int, size: tuple[int, int] = (64, 48)
) -> list[Path]:
    """`count` distinct JPEGs photo_000.jpg... in `folder`, `size` (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        draw_image(seed + i, size).save(path, quality=90)
        paths.append(path)
    return paths


def write_texts(path: Path, count: int, seed: int) -> list[str]:
    """A CSV with a `caption` column of `count` distinct short sentences."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "dog", "cat", "beach", "city", "night", "tree", "car"]
    texts = [f"{i} " + " ".join(rng.choice(words, 5)) for i in range(count)]
    path.write_text("caption\n" + "\n".join(texts) + "\n")
    return texts


@dataclass(frozen=True)
class Item:
    """One file of the hostile corpus: its token number, family, expectation and path."""

    number: int
    family: str
    expect: str  # good | bad | either
    path: bytes


class _Corpus:
    def __init__(self, root: Path):
        self.root = os.fsencode(root)
        os.makedirs(self.root, exist_ok=True)
        self.items: list[Item] = []

    def name(self, family: str, expect: str, tail: bytes, folder: bytes = b"") -> bytes:
        """A new file path: root/family/folder/fNNNN_<tail>, recorded with its expectation."""
        number = len(self.items)
        directory = self.root
        parts = [family.encode(), *(folder.split(b"/") if folder else [])]
        for part in parts:  # not os.makedirs: it recurses, and fails at 1,100 levels
            directory = os.path.join(directory, part)
            if not os.path.isdir(directory):
                os.mkdir(directory)
        path = os.path.join(directory, b"f%04d_" % number + tail)
        self.items.append(Item(number, family, expect, path))
        return path

    def write(self, family: str, expect: str, tail: bytes, data: bytes, folder: bytes = b""):
        with open(self.name(family, expect, tail, folder), "wb") as handle:
            handle.write(data)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def build_hostile(root: Path, *, cuts: int, good: int) -> list[Item]:
    """Write the hostile corpus under `root`: truncations of a JPEG/PNG/WEBP/GIF at `cuts` cut
    points each, bombs, extreme aspect ratios, odd modes, empty and lying files, links to devices,
    link loops, dangling links, a FIFO, non-UTF-8 and 255-byte names, a folder ~1,100 levels deep,
    a PNG with a 2 MB ICC profile, and `good` ordinary photos. Returns every file's Item."""
    corpus = _Corpus(root)
    base = draw_image(7, (96, 72))
    _truncations(corpus, base, cuts)
    _bombs(corpus)
    for size in ((10000, 1), (1, 20000), (200000, 1)):
        data = encoded(Image.new("L", size, 128), "PNG")
        corpus.write("aspect", "either", b"%dx%d.png" % size, data)
    _odd_modes(corpus, base)
    _lying_files(corpus, base)
    _links(corpus, base)
    _names(corpus, base)
    for i in range(good):
        fmt, suffix = [("JPEG", b"jpg"), ("PNG", b"png"), ("WEBP", b"webp"), ("GIF", b"gif"),
                       ("BMP", b"bmp"), ("TIFF", b"tif")][i % 6]
        image = draw_image(1000 + i, (80 + 7 * i % 300, 60 + 5 * i % 200))
        folder = b"good/%d" % (i % 4)
        corpus.write("good", "good", b"photo.%s" % suffix, encoded(image, fmt), folder)
    return corpus.items


def _truncations(corpus: _Corpus, base: Image.Image, cuts: int) -> None:
    for fmt, suffix in (("JPEG", b"jpg"), ("PNG", b"png"), ("WEBP", b"webp"), ("GIF", b"gif")):
        data = encoded(base, fmt)
        points = sorted({1, 8, *np.linspace(16, len(data) - 1, max(1, cuts - 2)).astype(int)})
        for cut in points[:cuts]:
            corpus.write("truncated", "either", b"cut%d.%s" % (cut, suffix), data[:cut], b"cut")


def _bombs(corpus: _Corpus) -> None:
    """Tiny files declaring enormous images (Pillow's limit is ~179 MP; these are 400 MP-4 GP)."""
    for width, height in ((20000, 20000), (65000, 65000), (1_000_000, 1000)):
        corpus.write("bomb", "bad", b"bomb%dx%d.png" % (width, height), _png_header(width, height))
    jpeg = encoded(Image.new("RGB", (8, 8)), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    for width, height in ((65000, 65000), (30000, 30000)):
        patched = jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]
        corpus.write("bomb", "bad", b"bomb%dx%d.jpg" % (width, height), patched)
    gif = bytearray(encoded(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    corpus.write("bomb", "bad", b"bomb65535.gif", bytes(gif))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height 8-bit grey pixels, with one short compressed row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x80" * min(width, 4096))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", row)
            + _png_chunk(b"IEND", b""))


def _png_rgb16(image: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    pixels = (np.asarray(image, dtype=np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", image.width, image.height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _odd_modes(corpus: _Corpus, base: Image.Image) -> None:
    grey16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    corpus.write("mode", "good", b"grey16.png", encoded(grey16, "PNG"))
    corpus.write("mode", "good", b"cmyk.jpg", encoded(base.convert("CMYK"), "JPEG"))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    corpus.write("mode", "good", b"palette_transparent.png",
                 encoded(palette, "PNG", transparency=0))
    corpus.write("mode", "good", b"palette_transparent.gif",
                 encoded(palette, "GIF", transparency=0))
    corpus.write("mode", "good", b"grey_alpha.png", encoded(base.convert("LA"), "PNG"))
    corpus.write("mode", "good", b"bilevel.png", encoded(base.convert("1"), "PNG"))
    corpus.write("mode", "good", b"rgb16.png", _png_rgb16(base))
    corpus.write("mode", "good", b"rgba.webp", encoded(base.convert("RGBA"), "WEBP"))
    corpus.write("mode", "good", b"float.tif", encoded(base.convert("F"), "TIFF"))
    corpus.write("mode", "good", b"progressive.jpg", encoded(base, "JPEG", progressive=True))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    corpus.write("mode", "good", b"rotated.jpg", encoded(base, "JPEG", exif=exif))
    frames = [draw_image(s, (40, 30)) for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    corpus.write("mode", "good", b"animated.gif", buffer.getvalue())
    icc = np.random.default_rng(0).bytes(2 << 20)  # 2 MB, incompressible (issue: MAX_TEXT_CHUNK)
    corpus.write("mode", "good", b"icc2mb.png", encoded(base, "PNG", icc_profile=icc))


def _lying_files(corpus: _Corpus, base: Image.Image) -> None:
    for suffix in (b"jpg", b"png", b"webp"):
        corpus.write("empty", "bad", b"empty." + suffix, b"")
    corpus.write("text", "bad", b"notes.jpg", b"these are my holiday notes, not a photo\n" * 20)
    corpus.write("text", "bad", b"page.png", b"<!doctype html><title>404</title>\n")
    corpus.write("text", "bad", b"random.webp", np.random.default_rng(1).bytes(5000))
    corpus.write("misnamed", "good", b"png_inside.jpg", encoded(base, "PNG"))
    corpus.write("misnamed", "good", b"trailing_garbage.jpg", encoded(base, "JPEG") + b"\0" * 999)


def _links(corpus: _Corpus, base: Image.Image) -> None:
    devices = ((b"/dev/zero", b"jpg"), (b"/dev/urandom", b"jpg"), (b"/dev/null", b"png"))
    for device, suffix in devices:
        os.symlink(device, corpus.name("device", "bad", b"%s.%s" % (device[5:], suffix)))
    fifo = corpus.name("device", "bad", b"fifo.jpg")
    os.mkfifo(fifo)
    loop = corpus.name("loop", "bad", b"self.jpg")
    os.symlink(os.path.basename(loop), loop)
    first = corpus.name("loop", "bad", b"ping.jpg")
    second = corpus.name("loop", "bad", b"pong.jpg")
    os.symlink(os.path.basename(second), first)
    os.symlink(os.path.basename(first), second)
    os.symlink(b"nowhere/missing.jpg", corpus.name("dangling", "bad", b"dangling.jpg"))
    os.symlink(b"/nonexistent/x.png", corpus.name("dangling", "bad", b"dangling_abs.png"))
    target = corpus.name("link", "good", b"target.jpg")
    with open(target, "wb") as handle:
        handle.write(encoded(draw_image(77), "JPEG"))
    # indexed under its own name, or listed (an engine may decline links): either way, accounted
    os.symlink(os.path.basename(target), corpus.name("link", "either", b"link_to_target.jpg"))
    os.makedirs(os.path.join(corpus.root, b"loop", b"cycle"), exist_ok=True)
    os.symlink(b"..", os.path.join(corpus.root, b"loop", b"cycle", b"up"))  # a folder loop


def _names(corpus: _Corpus, base: Image.Image) -> None:
    jpeg = encoded(draw_image(88), "JPEG")
    corpus.write("non-utf8", "good", b"caf\xe9.jpg", jpeg)
    corpus.write("non-utf8", "good", b"\xff\xfe.png", encoded(draw_image(89), "PNG"))
    inside = encoded(draw_image(90), "JPEG")
    corpus.write("non-utf8", "good", b"inside.jpg", inside, b"dossier_\xe9t\xe9")
    corpus.write("non-utf8", "bad", b"\xe9mpty.jpg", b"")
    for tail, seed in ((b"x" * (255 - 10) + b".jpg", 91), ("é".encode() * 120 + b"_.jpg", 92)):
        corpus.write("long-name", "good", tail, encoded(draw_image(seed), "JPEG"))  # 255 bytes
    deep = b"/".join([b"d"] * 1100)
    corpus.write("deep", "good", b"deep.jpg", encoded(draw_image(93), "JPEG"), b"deep/" + deep)


def remove_tree(path: Path) -> None:
    """Delete a folder tree, however deep (`shutil.rmtree` recurses and fails at ~1,000 levels)."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def token_number(path: str | bytes) -> int | None:
    """The corpus number of a path as the engine reports it, escaped or not (its last `fNNNN_`:
    no folder of the corpus carries one)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    found = TOKEN.findall(text)
    return int(found[-1]) if found else None
