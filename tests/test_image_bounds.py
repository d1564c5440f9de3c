"""Bounds on what one image may cost: extreme aspect ratios (memory of the model's transform),
the pixel limit against Pillow's own ceiling, and PNG metadata (ICC profile) limits."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, draw_image
from PIL import Image, PngImagePlugin

from searchengine.errors import ImageDecodeError
from searchengine.images import MAX_ASPECT_RATIO, fit_for_model, load_image
from searchengine.ingest.decode import DecodeDataset
from searchengine.ingest.scan import FileStat
from searchengine.settings import IngestSettings

ONE_LEVEL = 1 / 255 / 0.26  # one 8-bit step in the normalised tensor (the smallest std)
# Pillow's two bicubic passes each round to 8 bits; the second carries the first's rounding
# (half a level) with weights whose absolute values sum to under 1.3. The two orders of the passes
# thus differ by at most two levels wherever nothing is clipped at 0 or 255.
PASS_ORDER_MAX_ABS = 2 * ONE_LEVEL * 1.01
DRAFT_MEAN_ABS = 0.02  # the bounds docs/preprocessing.md states for the draft path
DRAFT_WORST_MAX_ABS = 0.6  # (0.6: its harshest case, Flickr photos drafted for a 32-px model)
GROWTH_LIMIT_MB = 100  # the old code needed 614 MB (32-px model) to 38 GB (224 px) at 200000:1


def strip(width: int, height: int) -> Image.Image:
    """A one-pixel-thin grey strip whose middle 41 pixels are green: the centre crop of a
    shortest-side resize sees only green (bicubic reaches two source pixels either side)."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    if width >= height:
        pixels[:, width // 2 - 20 : width // 2 + 21] = (0, 200, 0)
    else:
        pixels[height // 2 - 20 : height // 2 + 21, :] = (0, 200, 0)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


# -- extreme aspect ratios: every intermediate image bounded ------------------------------------

MEMORY_PROBE = r"""
import io, json, resource, sys
from pathlib import Path
import numpy as np
from PIL import Image

def peak_since_reset():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

folder, model = Path(sys.argv[1]), sys.argv[2]
import open_clip
from searchengine.encoder import Encoder, resizes_then_centre_crops
from searchengine.ingest.decode import DecodeDataset
from searchengine.ingest.scan import FileStat
from searchengine.settings import EncoderSettings, IngestSettings

encoder = Encoder.load(model, EncoderSettings(device="cpu"))
clip_224 = open_clip.image_transform(224, is_train=False)  # ViT-B-32's transform, no weights
crop_224 = resizes_then_centre_crops(clip_224, 224)
paths = sorted(folder.glob("*.png"))

def index_path(path):  # what an `index` decode worker does
    item = DecodeDataset([FileStat(str(path), 0, 0)], clip_224, 224, IngestSettings(),
                         crop=crop_224)[0]
    return item.error, item.pixels

def query_path(path):  # what `serve` does with an upload (and queries with a file)
    from searchengine.images import load_image
    image, _ = load_image(path.read_bytes(), max_pixels=50_000_000)
    return None, encoder.pixels(image)

for run in (index_path, query_path):  # warm both paths up on a small image
    run(folder / "small.png.warm")
# Fail fast instead of filling the machine: at most 2 GB more address space from here on.
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, resource.RLIM_INFINITY))
results = []
for path in paths:
    for run in (index_path, query_path):
        before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
        reset_peak()
        try:
            error, pixels = run(path)
        except MemoryError:
            error, pixels = "MemoryError", None
        growth = (peak_since_reset() - before) / 2**20
        green = None if pixels is None else pixels.mean(dim=(1, 2)).tolist()
        results.append({"file": path.name, "path": run.__name__, "growth_mb": growth,
                        "error": error, "shape": None if pixels is None else list(pixels.shape),
                        "mean_per_channel": green})
print(json.dumps(results))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_extreme_aspect_ratios_cost_little_memory_and_embed_their_centre(tmp_path):
    """200000x1 and 1x200000 PNGs (under 1 KB each) through an `index` decode worker (ViT-B-32's
    224-px transform) and the query/upload path (`Encoder.pixels`): peak RSS grows by less than
    GROWTH_LIMIT_MB, and the model sees the centre of the strip (green), nothing else."""
    for width, height in ((200_000, 1), (1, 200_000)):
        (tmp_path / f"{width}x{height}.png").write_bytes(png_bytes(strip(width, height)))
    (tmp_path / "small.png.warm").write_bytes(png_bytes(draw_image(1, (300, 200))))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path), TINY_MODEL],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert len(results) == 4
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258,
                                                                         0.27577711])
    green = (np.array([0, 200, 0]) / 255 - mean) / std  # the normalised tensor of pure green
    for result in results:
        assert result["error"] is None, result
        assert result["growth_mb"] < GROWTH_LIMIT_MB, result
        assert result["shape"][0] == 3 and result["shape"][1] == result["shape"][2], result
        np.testing.assert_allclose(result["mean_per_channel"], green, atol=2 * ONE_LEVEL)


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    """Pixel noise: the worst case for bicubic resizing (overshoot clipped at 0 and 255)."""
    grain = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    return Image.fromarray(grain.astype(np.uint8))


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Coarse shapes, a gradient and fine grain, as tests/test_images.py's JPEGs: a crop or scale
    off by a fraction of a pixel moves many levels, so one level means the same geometry."""
    base = np.asarray(draw_image(seed, size), dtype=np.int16)
    grain = np.random.default_rng(seed).integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "size", [(300, 200), (200, 300), (33, 32), (5, 3), (MAX_ASPECT_RATIO, 1), (1, MAX_ASPECT_RATIO)]
)
def test_pictures_up_to_the_aspect_limit_get_open_clips_pixels_exactly(tiny_encoder, size):
    image = noise(size, seed=sum(size))
    assert fit_for_model(image, tiny_encoder.image_size, crop=True) is image
    np.testing.assert_array_equal(
        tiny_encoder.pixels(image).numpy(), tiny_encoder.preprocess(image).numpy()
    )


ELONGATED = [(2000, 7), (7, 2000), (1000, 1), (1, 1000), (3000, 29), (29, 3000), (202, 2),
             (2, 202)]


@pytest.mark.parametrize("size", ELONGATED)
def test_elongated_pictures_get_the_pixels_of_open_clip_preprocess(tiny_encoder, size):
    """The fast path against the reference: `Encoder.pixels` (centre square cut out, then
    scaled) against `preprocess` of the full picture (scaled, then cropped). Pillow runs its two
    8-bit passes in the order it prefers for each output size, so the rounding differs: two
    levels at most on photo-like pictures, more on pixel noise (within the draft bounds)."""
    assert tiny_encoder.draft_crop
    photo = photo_like(size, seed=sum(size))
    bounded, reference = tiny_encoder.pixels(photo), tiny_encoder.preprocess(photo)
    assert bounded.shape == reference.shape == (3, 32, 32)
    assert float((bounded - reference).abs().max()) <= PASS_ORDER_MAX_ABS, size
    grain = noise(size, seed=sum(size))
    difference = (tiny_encoder.pixels(grain) - tiny_encoder.preprocess(grain)).abs()
    assert float(difference.max()) <= DRAFT_WORST_MAX_ABS, size
    assert float(difference.mean()) <= DRAFT_MEAN_ABS, size


@pytest.mark.parametrize("size", [(1500, 5), (5, 1500), (30000, 150)])
def test_elongated_crop_matches_the_224_px_transform(size):
    import open_clip

    preprocess = open_clip.image_transform(224, is_train=False)
    image = photo_like(size, seed=3)
    fitted = fit_for_model(image, 224, crop=True)
    assert fitted.size == (224, 224)
    difference = (preprocess(fitted) - preprocess(image)).abs()
    assert float(difference.max()) <= PASS_ORDER_MAX_ABS, size


@pytest.mark.parametrize("mode", ["squash", "longest"])
def test_transforms_that_need_the_whole_picture_skip_extreme_strips_with_a_reason(tmp_path, mode):
    import open_clip

    from searchengine.encoder import resizes_then_centre_crops

    preprocess = open_clip.image_transform(224, is_train=False, resize_mode=mode)
    crop = resizes_then_centre_crops(preprocess, 224)
    assert not crop
    files = []
    for width, height in ((20_000, 1), (1, 20_000), (MAX_ASPECT_RATIO, 1), (300, 200)):
        path = tmp_path / f"{width}x{height}.png"
        path.write_bytes(png_bytes(strip(width, height)))
        files.append(FileStat(str(path), 0, 0))
    dataset = DecodeDataset(files, preprocess, 224, IngestSettings(), crop=crop)
    decoded = [dataset[i] for i in range(len(files))]
    for item in decoded[:2]:
        assert item.pixels is None
        assert "more elongated than 100:1" in item.error, item.error
    for item in decoded[2:]:
        assert item.error is None and tuple(item.pixels.shape) == (3, 224, 224)


# -- the pixel limit: ours, not Pillow's --------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A greyscale PNG that claims `width` x `height` pixels and holds none (an empty IDAT):
    opening it reads the header only, loading it fails at once as truncated."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_max_pixels_decides_not_pillows_ceiling():
    """190 MP is within the documented 200 MP but over Pillow's own 178.9 MP ceiling: it must
    reach decoding (here: truncated), and Pillow's process-wide limit is back afterwards."""
    ceiling = Image.MAX_IMAGE_PIXELS
    data = png_header(20_000, 9_500)  # 190 000 000 pixels
    assert IngestSettings().max_pixels == 200_000_000
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(data, max_pixels=IngestSettings().max_pixels)
    for limit in (150_000_000, 180_000_000):  # below and above Pillow's ceiling: our message
        with pytest.raises(ImageDecodeError, match=f"over the limit of {limit}"):
            load_image(data, max_pixels=limit)
    with pytest.raises(ImageDecodeError, match="over the limit of 200000000"):
        load_image(png_header(20_000, 12_000), max_pixels=200_000_000)  # 240 MP
    assert ceiling == Image.MAX_IMAGE_PIXELS


def test_upload_pixel_limit_is_the_servers_setting_not_pillows():
    from searchengine.server.errors import ApiError
    from searchengine.server.uploads import read_upload

    data = png_header(20_000, 9_500)
    with pytest.raises(ApiError) as raised:
        read_upload(io.BytesIO(data), "big.png", max_bytes=1000, max_pixels=200_000_000)
    assert raised.value.status == 422 and "truncated" in raised.value.message
    with pytest.raises(ApiError) as raised:
        read_upload(io.BytesIO(data), "big.png", max_bytes=1000, max_pixels=100_000_000)
    assert raised.value.status == 413


# -- PNG metadata ------------------------------------------------------------------------------


def test_png_with_a_two_megabyte_icc_profile_decodes():
    profile = np.random.default_rng(5).integers(0, 256, 2 * 2**20, dtype=np.uint8).tobytes()
    image = draw_image(4, (40, 30))
    data = png_bytes(image, icc_profile=profile)
    assert len(data) > 2 * 2**20  # incompressible: a real 2 MB iCCP chunk
    decoded, info = load_image(data)
    assert info.format == "PNG"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
    assert PngImagePlugin.MAX_TEXT_CHUNK == 1024 * 1024  # Pillow's global is back


def test_an_absurd_png_metadata_chunk_is_still_refused():
    """A zlib bomb in the ICC profile: 64 MB of zeros in a 64 KB chunk."""
    data = png_bytes(draw_image(4, (40, 30)), icc_profile=bytes(64 * 2**20))
    assert len(data) < 2**20
    with pytest.raises(ImageDecodeError, match="MAX_TEXT_CHUNK"):
        load_image(data)
