"""Decoding: formats, EXIF orientation and metadata, alpha, bad files, and the draft JPEG path
against open_clip's own preprocessing."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import draw_image, write_image
from PIL import Image

from searchengine.errors import ImageDecodeError
from searchengine.images import load_image

# The draft path (Image.draft: libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the model's
# input side) may move the preprocessed tensor by at most this much. Units are those of the
# normalised tensor: one 8-bit level is about 1/255/0.27 = 0.0145, so 0.1 is ~7 levels.
DRAFT_MAX_ABS = 0.1
DRAFT_MEAN_ABS = 0.02
DRAFT_MIN_COSINE = 0.999  # between the embeddings of the draft and the reference decode


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "suffix, fmt",
    [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF"),
     (".gif", "GIF")],
)
def test_accepted_formats_decode_to_rgb(tmp_path, suffix, fmt):
    path = write_image(tmp_path / f"x{suffix}", seed=1, size=(40, 30))
    image, info = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert (info.width, info.height, info.format) == (40, 30, fmt)
    assert info.taken_at is None and info.camera is None
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: the very pixels
        np.testing.assert_array_equal(np.asarray(image), np.asarray(draw_image(1, (40, 30))))


def test_bytes_and_path_give_the_same_image(tmp_path):
    path = write_image(tmp_path / "x.jpg", seed=2)
    from_path, info_path = load_image(path)
    from_bytes, info_bytes = load_image(path.read_bytes())
    np.testing.assert_array_equal(np.asarray(from_path), np.asarray(from_bytes))
    assert info_path == info_bytes


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), color) for color in ((200, 10, 10), (10, 200, 10))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, info = load_image(path)
    assert info.format == "GIF" and image.mode == "RGB"
    assert np.asarray(image).reshape(-1, 3).mean(axis=0).round().tolist() == [200, 10, 10]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])  # palette alpha: see the GIF test
def test_alpha_is_flattened_over_white(tmp_path, mode):
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[:, 10:] = (0, 0, 0, 255)  # opaque black stays black
    image = Image.fromarray(rgba, "RGBA")
    if mode != "RGBA":
        image = image.convert(mode)
    path = tmp_path / "alpha.png"
    image.save(path)
    decoded, _ = load_image(path)
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB"
    assert pixels[:, :10].min() == 255, "transparent pixels must be white"
    assert pixels[:, 10:].max() == 0


def test_half_transparent_pixels_blend_with_white(tmp_path):
    rgba = np.full((4, 4, 4), (255, 0, 0, 128), dtype=np.uint8)
    path = tmp_path / "half.webp"
    Image.fromarray(rgba, "RGBA").save(path, lossless=True)
    pixel = np.asarray(load_image(path)[0])[0, 0].astype(int)
    np.testing.assert_allclose(pixel, [255, 127, 127], atol=2)


def test_gif_transparency_is_flattened(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (4, 0, 8, 8))
    path = tmp_path / "t.gif"
    image.save(path, transparency=0)
    pixels = np.asarray(load_image(path)[0])
    assert pixels[:, :4].min() == 255 and pixels[0, 6].tolist() == [255, 0, 0]


def exif_jpeg(path: Path, image: Image.Image, orientation: int | None = None,
              taken: str | None = None, camera: str | None = None) -> Path:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    if camera:
        exif[0x0110] = camera
    if taken:
        exif.get_ifd(0x8769)[36867] = taken
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path):
    stored = draw_image(3, (60, 40))  # as the sensor wrote it: landscape
    path = exif_jpeg(tmp_path / "rotated.jpg", stored, orientation=6)
    image, info = load_image(path)
    assert image.size == (40, 60) and (info.width, info.height) == (40, 60)
    plain = Image.open(io.BytesIO(encoded(stored, "JPEG", quality=95))).convert("RGB")
    upright = plain.transpose(Image.Transpose.ROTATE_270)  # orientation 6: rotate 90 clockwise
    np.testing.assert_array_equal(np.asarray(image), np.asarray(upright))


def test_exif_capture_time_and_camera_are_read(tmp_path):
    path = exif_jpeg(tmp_path / "cam.jpg", draw_image(4), taken="2023:07:14 10:20:30",
                     camera="Pixel 7")
    _, info = load_image(path)
    assert info.taken_at == datetime(2023, 7, 14, 10, 20, 30)
    assert info.camera == "Pixel 7"


def test_a_malformed_exif_time_is_ignored(tmp_path):
    path = exif_jpeg(tmp_path / "cam.jpg", draw_image(4), taken="not a time", camera="X")
    _, info = load_image(path)
    assert info.taken_at is None and info.camera == "X"


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a regex the reason must match)."""
    good = write_image(folder / "good.jpg", seed=5, size=(64, 48)).read_bytes()
    files = {
        "empty": (b"", "empty file"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "corrupt": (good[:200] + bytes(range(256)) * 8, "corrupt|truncated"),
        "text": (b"hello, I am not a picture\n" * 20, "not an image"),
        "random": (np.random.default_rng(0).bytes(3000), "not an image"),
        "ppm": (encoded(draw_image(5), "PPM"), "unsupported image format PPM"),
    }
    out = {}
    for name, (data, reason) in files.items():
        path = folder / f"{name}.jpg"
        path.write_bytes(data)
        out[name] = (path, reason)
    return out


def test_bad_files_raise_decode_errors_with_a_reason(tmp_path):
    for path, reason in bad_files(tmp_path).values():
        with pytest.raises(ImageDecodeError, match=reason):
            load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = write_image(tmp_path / "big.png", seed=6, size=(300, 200))
    with pytest.raises(ImageDecodeError, match="over the limit of 50000.*decompression bomb"):
        load_image(path, max_pixels=50_000)
    assert load_image(path, max_pixels=60_000)[0].size == (300, 200)


def test_missing_file_and_folder_are_decode_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="vanished"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        load_image(tmp_path)


# -- against open_clip's preprocessing --------------------------------------------------------


def textured_jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A photo-like JPEG: coarse shapes, a gradient and fine grain (which draft decoding blurs)."""
    base = np.asarray(draw_image(seed, size), dtype=np.int16)
    grain = np.random.default_rng(seed).integers(-20, 21, size=base.shape)
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_full_decode_equals_open_clip_preprocess_exactly(tmp_path, tiny_encoder, suffix):
    path = write_image(tmp_path / f"plain{suffix}", seed=7, size=(300, 200))
    reference = tiny_encoder.preprocess(Image.open(path).convert("RGB"))  # (3, 32, 32)
    for target in (None, tiny_encoder.image_size * 5):  # too small for draft: same pixels
        image, _ = load_image(path, target_size=target)
        np.testing.assert_array_equal(tiny_encoder.preprocess(image).numpy(), reference.numpy())


# Odd sides matter: a reduced decode rounds them up, which must not shift or rescale the crop.
LARGE_SIZES = [(2000, 1500), (2000, 1331), (1331, 2000), (3001, 2001)]


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory) -> dict[tuple[int, int], Path]:
    folder = tmp_path_factory.mktemp("large")
    return {size: textured_jpeg(folder / f"{size[0]}x{size[1]}.jpg", size, seed=8)
            for size in LARGE_SIZES}


def pillow_draft(path: Path, request: tuple[int, int]) -> tuple[Image.Image, tuple]:
    image = Image.open(path)
    box = image.draft("RGB", request)[1]
    image.load()
    return image, box


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_fast_reduced_decode_equals_pillows_draft_at_the_same_scale(tmp_path, monkeypatch, mode):
    """simplejpeg and Pillow both drive libjpeg-turbo: same scale, same pixels, same box.
    800x600 is a size where libjpeg's smallest fitting scale (3/8) is one Pillow never uses."""
    import simplejpeg

    from searchengine.images import _reduced_jpeg

    decoded = []
    monkeypatch.setattr(simplejpeg, "decode_jpeg",
                        lambda *a, _decode=simplejpeg.decode_jpeg, **k: decoded.append(1)
                        or _decode(*a, **k))
    for size, request, scale in [((2000, 1500), (299, 224), 4), ((1331, 2000), (224, 337), 4),
                                 ((3001, 2001), (336, 224), 8), ((1000, 900), (249, 224), 4),
                                 ((800, 600), (299, 224), 2)]:
        path = textured_jpeg(tmp_path / f"{mode}{size}.jpg", size, seed=15)
        if mode == "L":
            Image.open(path).convert("L").save(path, quality=90)
        image = Image.open(path)
        fast, box = _reduced_jpeg(path.read_bytes(), image, 224)
        reference, reference_box = pillow_draft(path, request)
        assert fast.mode == reference.mode == mode
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(reference))
        assert box == reference_box == (0, 0, size[0] / scale, size[1] / scale)
    assert len(decoded) == 5 and fast is not image  # the fast path ran, not Pillow's fallback


def test_reduced_decode_keeps_pillows_verdict_on_untidy_and_broken_jpegs(tmp_path):
    """Bytes before the end marker only make libjpeg warn: decoded, as Pillow decodes them.
    A truncated or scrambled scan is still skipped with the reason Pillow gives."""
    good = textured_jpeg(tmp_path / "good.jpg", (1200, 900), seed=16).read_bytes()
    untidy = tmp_path / "untidy.jpg"
    untidy.write_bytes(good[:-2] + b"\x00" * 7 + good[-2:])
    image, info = load_image(untidy, target_size=224)
    expected, _ = load_image(good, target_size=224)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(truncated, target_size=224)


def test_cmyk_jpeg_takes_pillows_draft_and_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (1000, 800), (0, 255, 255, 0)).save(path)  # red ink
    image, info = load_image(path, target_size=224)
    assert image.mode == "RGB" and min(image.size) == 224 and info.width == 1000
    np.testing.assert_allclose(np.asarray(image)[100, 100].astype(int), [255, 0, 0], atol=8)


def test_draft_decode_is_smaller_but_never_below_the_model_input(large_jpegs):
    for (width, height), path in large_jpegs.items():
        for side in (32, 224):
            image, info = load_image(path, target_size=side)
            assert min(image.size) == side and image.size[0] < width
            assert (info.width, info.height) == (width, height)  # metadata: the stored size


@pytest.mark.parametrize("size", LARGE_SIZES)
@pytest.mark.parametrize("side", [32, 224])
def test_draft_moves_preprocessed_pixels_within_the_bound(large_jpegs, size, side):
    import open_clip

    preprocess = open_clip.image_transform(side, is_train=False)  # as open_clip builds it
    reference = preprocess(Image.open(large_jpegs[size]).convert("RGB"))
    draft = preprocess(load_image(large_jpegs[size], target_size=side)[0])
    assert draft.shape == reference.shape
    difference = (draft - reference).abs()
    assert float(difference.max()) <= DRAFT_MAX_ABS
    assert float(difference.mean()) <= DRAFT_MEAN_ABS


def test_draft_moves_the_embedding_within_the_bound(large_jpegs, tiny_encoder, tmp_path):
    import torch

    path = large_jpegs[(2000, 1331)]
    preprocess = tiny_encoder.preprocess
    reference = preprocess(Image.open(path).convert("RGB"))
    draft = preprocess(load_image(path, target_size=tiny_encoder.image_size)[0])
    other = preprocess(Image.open(textured_jpeg(tmp_path / "o.jpg", (2000, 1331), seed=9)))
    vectors = tiny_encoder.encode_images(torch.stack([reference, draft, other]))  # (3, d)
    cos_draft = float(vectors[0] @ vectors[1])
    cos_other = float(vectors[0] @ vectors[2])
    assert cos_draft >= DRAFT_MIN_COSINE
    # A random model maps all images close together; the draft must be far closer than another
    # picture is.
    assert 1 - cos_draft <= 0.05 * (1 - cos_other)


def test_draft_with_exif_rotation(tmp_path):
    stored = draw_image(10, (1200, 800))
    path = exif_jpeg(tmp_path / "big_rotated.jpg", stored, orientation=6)
    image, info = load_image(path, target_size=224)
    assert (info.width, info.height) == (800, 1200)
    assert image.size[1] > image.size[0] and min(image.size) >= 224


# -- the cropped draft: resized straight to the model's centre crop ---------------------------

ONE_LEVEL = 1 / 255 / 0.26  # one 8-bit step in the normalised tensor (the smallest std)


def _reference(path: Path, preprocess):
    """open_clip's preprocessing of the full decode, made upright as load_image makes it."""
    from PIL import ImageOps

    return preprocess(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


@pytest.mark.parametrize("size", LARGE_SIZES)
@pytest.mark.parametrize("side", [32, 224])
def test_cropped_draft_gives_the_pixels_of_the_uncropped_one(large_jpegs, size, side):
    import open_clip

    preprocess = open_clip.image_transform(side, is_train=False)
    whole = load_image(large_jpegs[size], target_size=side)[0]
    cropped = load_image(large_jpegs[size], target_size=side, crop=True)[0]
    assert cropped.size == (side, side) and min(whole.size) == side
    difference = (preprocess(cropped) - preprocess(whole)).abs()  # both (3, side, side)
    # Pillow resizes in two passes, each rounded to 8 bits, and may run them in the other order
    # for the smaller output: a pixel can move by one level, no more, and most do not move.
    assert float(difference.max()) <= ONE_LEVEL
    assert float((difference > 0).float().mean()) <= 0.3
    reference = _reference(large_jpegs[size], preprocess)
    assert float((preprocess(cropped) - reference).abs().max()) <= DRAFT_MAX_ABS


@pytest.mark.parametrize("orientation", range(1, 9))
def test_cropped_draft_follows_every_exif_orientation(tmp_path, orientation):
    """Odd sides put the full picture's box off the drafted image's edge after a flip; the crop
    must still match the reference decode of the upright photo, and the uncropped draft."""
    import open_clip

    stored = Image.open(textured_jpeg(tmp_path / "grain.jpg", (1801, 1203), seed=13))
    path = exif_jpeg(tmp_path / f"o{orientation}.jpg", stored, orientation=orientation)
    preprocess = open_clip.image_transform(224, is_train=False)
    reference = _reference(path, preprocess)
    for crop in (False, True):
        image, info = load_image(path, target_size=224, crop=crop)
        upright = (1203, 1801) if orientation >= 5 else (1801, 1203)
        assert (info.width, info.height) == upright
        assert (image.width > image.height) == (upright[0] > upright[1]) or crop
        assert "exif" not in image.info or image.getexif().get(0x0112, 1) == 1  # not rotated twice
        difference = (preprocess(image) - reference).abs()
        assert float(difference.max()) <= DRAFT_MAX_ABS, (orientation, crop)
        assert float(difference.mean()) <= DRAFT_MEAN_ABS, (orientation, crop)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_draft_geometry_under_rotation_is_that_of_the_upright_photo(tmp_path, orientation):
    """The same JPEG scan with another EXIF orientation: rotating the upright draft afterwards
    must give the pixels load_image gives (one level of pass-order rounding at most). A box
    carried wrongly through the flip would shift the grain by half a pixel: many levels."""
    from torchvision.transforms.functional import center_crop

    stored = Image.open(textured_jpeg(tmp_path / "grain.jpg", (1801, 1203), seed=14))
    plain = exif_jpeg(tmp_path / "o1.jpg", stored, orientation=1)
    turned = exif_jpeg(tmp_path / f"o{orientation}.jpg", stored, orientation=orientation)
    upright = turned_as_pillow_turns(load_image(plain, target_size=224)[0], orientation)
    for crop in (False, True):
        expected = center_crop(upright, [224, 224]) if crop else upright  # torchvision's rounding
        image = load_image(turned, target_size=224, crop=crop)[0]
        assert image.size == expected.size
        difference = np.abs(np.asarray(image, int) - np.asarray(expected, int))
        assert difference.max() <= 1, (orientation, crop)


def turned_as_pillow_turns(image: Image.Image, orientation: int) -> Image.Image:
    """`image` tagged with `orientation` and made upright by Pillow's own exif_transpose."""
    from PIL import ImageOps

    image.getexif()[0x0112] = orientation
    return ImageOps.exif_transpose(image)


def test_only_a_shortest_side_resize_and_centre_crop_lets_decoding_crop(tiny_encoder):
    import open_clip

    from searchengine.encoder import resizes_then_centre_crops

    assert tiny_encoder.draft_crop  # open_clip's default for its CLIP models
    assert resizes_then_centre_crops(open_clip.image_transform(224, is_train=False), 224)
    assert not resizes_then_centre_crops(open_clip.image_transform(224, is_train=False), 256)
    for other in ({"resize_mode": "squash"}, {"resize_mode": "longest"},
                  {"interpolation": "bilinear"}):
        assert not resizes_then_centre_crops(
            open_clip.image_transform(224, is_train=False, **other), 224), other
    assert not resizes_then_centre_crops(lambda image: image, 224)


def test_pillows_own_pixel_warning_does_not_override_max_pixels(tmp_path, monkeypatch):
    """A 100 MP camera photo is over Pillow's fixed 89 MP warning but within `max_pixels`
    (200 MP by default): it must be decoded, not skipped as a bomb. Scaled down here."""
    path = write_image(tmp_path / "big.png", seed=11, size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # 10 000 px: Pillow only warns
    assert load_image(path, max_pixels=20_000)[0].size == (100, 100)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(path, max_pixels=9_000)


def test_sixteen_bit_greyscale_keeps_its_tones(tmp_path):
    ramp = np.linspace(0, 65535, 256, dtype=np.float64).astype(np.uint16).reshape(16, 16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(load_image(path)[0])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    np.testing.assert_allclose(pixels[..., 0], ramp / 256, atol=1)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path)  # red ink
    pixel = np.asarray(load_image(path)[0])[5, 5].astype(int)
    np.testing.assert_allclose(pixel, [255, 0, 0], atol=8)


def test_heic_when_pillow_heif_is_installed(tmp_path):
    from searchengine.images import HEIF_SUPPORTED

    if not HEIF_SUPPORTED:
        pytest.skip("pillow-heif is not installed")
    path = tmp_path / "phone.heic"
    try:
        draw_image(12, (64, 48)).save(path, format="HEIF", quality=90)
    except (KeyError, OSError, ValueError) as error:
        pytest.skip(f"this libheif cannot encode HEIC: {error}")
    image, info = load_image(path)
    assert image.size == (64, 48) and info.format == "HEIF"
    difference = np.abs(np.asarray(image, float) - np.asarray(draw_image(12, (64, 48)), float))
    assert difference.mean() < 10


FLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k-1k" / "images"
# Real photos drafted at 1/8 for a 32-px model, the harshest ratio: fine detail moves more than
# in the generated pictures above (measured on 60 photos: max 0.50, mean <= 0.071).
REAL_MAX_ABS = 0.6
REAL_MEAN_ABS = 0.08


@pytest.mark.skipif(not FLICKR.is_dir(), reason="../shared/data/flickr8k-1k is not here")
def test_draft_bound_holds_on_real_photos(tiny_encoder):
    import torch

    paths = sorted(FLICKR.glob("*.jpg"))[:12]
    assert paths
    for path in paths:
        reference = tiny_encoder.preprocess(Image.open(path).convert("RGB"))
        for crop in (False, True):  # as `index` decodes for this model: crop=draft_crop
            image, info = load_image(path, target_size=tiny_encoder.image_size, crop=crop)
            draft = tiny_encoder.preprocess(image)
            difference = (draft - reference).abs()
            assert float(difference.max()) <= REAL_MAX_ABS, (path.name, crop)
            assert float(difference.mean()) <= REAL_MEAN_ABS, (path.name, crop)
            vectors = tiny_encoder.encode_images(torch.stack([reference, draft]))
            assert float(vectors[0] @ vectors[1]) >= DRAFT_MIN_COSINE, (path.name, crop)
        full = tiny_encoder.preprocess(load_image(path)[0])
        np.testing.assert_array_equal(full.numpy(), reference.numpy())
