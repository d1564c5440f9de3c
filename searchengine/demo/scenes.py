"""Scenes: a seeded world of photo-like pictures of coloured shapes, with captions.

A scene is either a *group* (one to three copies of one object, e.g. "two small red circles on
the left of a striped background") or a *pair* (two different objects in a spatial relation, e.g.
"a blue star above a green square"), drawn on one of six backgrounds (plain, gradient, stripes,
noise, wood, marble). Everything follows from a seed: the same seed gives the same scenes, the
same captions and the same pixels.

Some (colour, shape) combinations never occur in the `train` split; every scene of the `heldout`
split contains at least one of them, so recall on it measures generalisation to combinations the
model has never seen (`HELDOUT_PAIRS`).

Two options vary the training data without changing the default world: `free_colour`, the
fraction of train scenes whose objects are drawn in a random unnamed colour (far from every
named colour, alike for every shape) and described without colour words, so that shape is
seen in many colours; and `generic_nouns`, the chance that a group scene's caption calls its
objects "shape(s)" ("two red shapes on the left") instead of naming the shape.

The bundled `demo` model is trained on this world; `searchengine demo` indexes a held-out
collection written by `write_collection`.
"""

from __future__ import annotations

import colorsys
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from searchengine.errors import InvalidInputError
from searchengine.progress import progress_bar

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "purple": (130, 50, 175),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom", "centre")
RELATIONS = ("above", "below", "left of", "right of")
BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "wood", "marble")
SPLITS = ("train", "heldout")
# Each colour and each shape is held out exactly once, so both are seen in training, only never
# together: a test of composition, not of new words.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("orange", "square"), ("yellow", "heart"), ("green", "star"),
    ("blue", "circle"), ("purple", "hexagon"), ("white", "cross"), ("black", "diamond"),
})
PAIR_SCENE_FRACTION = 0.4
# Radius of an object as a fraction of the image side (mean, jitter), and the gap between objects.
_RADIUS = {"small": (0.075, 0.005), "large": (0.12, 0.006)}
_GAP = 0.05
# Muted mid-tone background colours: every object colour stands out on them.
_PALETTE = (
    (150, 150, 150), (165, 155, 145), (190, 175, 150), (140, 160, 135), (125, 140, 160),
    (175, 145, 145), (185, 170, 130), (120, 150, 150), (150, 145, 170), (140, 125, 115),
)
_MIN_CONTRAST = 90.0  # least RGB distance between a background colour and an object colour
SCENE_COLUMNS = (
    "image", "split", "kind", "count", "size", "colour", "shape", "position",
    "relation", "size2", "colour2", "shape2", "background",
)


@dataclass(frozen=True)
class SceneObject:
    """One kind of object: a shape in a colour and a size (names from SHAPES, COLOURS, SIZES).

    An object of an unnamed colour has `colour` "" and its RGB in `tint`.
    """

    shape: str
    colour: str
    size: str
    tint: tuple[int, int, int] | None = None

    def rgb(self) -> tuple[int, int, int]:
        return self.tint if self.tint is not None else COLOURS[self.colour]


@dataclass(frozen=True)
class Scene:
    """Everything that defines one picture; `render(scene)` draws it.

    kind "group": `count` copies of `objects[0]` at `position`;
    kind "pair": `objects[0]` is `relation` `objects[1]` (e.g. above), `count` is 2.
    `seed` fixes the layout, the jitter and the texture; `captions` are distinct sentences.
    """

    seed: int
    split: str
    kind: str
    objects: tuple[SceneObject, ...]
    count: int
    position: str | None
    relation: str | None
    background: str
    captions: tuple[str, ...]
    image_size: int = 128

    def attributes(self) -> dict[str, str]:
        """Attributes as strings keyed like SCENE_COLUMNS (without `image`); "" = not applicable."""
        first = self.objects[0]
        second = self.objects[1] if self.kind == "pair" else None
        return {
            "split": self.split, "kind": self.kind,
            "count": str(self.count) if self.kind == "group" else "",
            "size": first.size, "colour": first.colour, "shape": first.shape,
            "position": self.position or "", "relation": self.relation or "",
            "size2": second.size if second else "", "colour2": second.colour if second else "",
            "shape2": second.shape if second else "", "background": self.background,
        }


def generate_scenes(
    n: int,
    *,
    seed: int,
    split: str = "train",
    image_size: int = 128,
    captions_per_scene: int = 5,
    free_colour: float = 0.0,
    generic_nouns: float = 0.0,
) -> list[Scene]:
    """Sample `n` scenes of `split` ("train" or "heldout"), reproducibly from `seed`.

    Train scenes never contain a (colour, shape) pair of HELDOUT_PAIRS; held-out scenes always
    contain at least one. Scene i depends only on (seed, split, i), so a longer list extends a
    shorter one. `free_colour` (train split only) and `generic_nouns`: see the module's text;
    at 0 (the default) the scenes are those of the plain world, and a scene drawn in free
    colours keeps the layout, sizes and shapes it has without them.
    """
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 0 or captions_per_scene < 1 or not 32 <= image_size <= 1024:
        raise InvalidInputError(
            "need n >= 0, captions_per_scene >= 1 and 32 <= image_size <= 1024"
        )
    if not (0 <= free_colour <= 1 and 0 <= generic_nouns <= 1):
        raise InvalidInputError("free_colour and generic_nouns are fractions from 0 to 1")
    if free_colour and split != "train":
        raise InvalidInputError("free_colour is for the train split only: every held-out scene "
                                "names the held-out colour-shape pair it shows")
    return [
        _sample_scene(
            i, seed=seed, split=split, image_size=image_size, n_captions=captions_per_scene,
            free_colour=free_colour, generic_nouns=generic_nouns,
        )
        for i in range(n)
    ]


def _sample_scene(index: int, *, seed: int, split: str, image_size: int, n_captions: int,
                  free_colour: float = 0.0, generic_nouns: float = 0.0) -> Scene:
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    scene_seed = int(rng.integers(2**31))
    heldout = split == "heldout"
    if rng.random() < PAIR_SCENE_FRACTION:
        first = _sample_object(rng, heldout=heldout)
        second = _sample_object(rng, heldout=False if heldout else None)
        while (second.colour, second.shape) == (first.colour, first.shape):
            second = _sample_object(rng, heldout=False if heldout else None)
        objects: tuple[SceneObject, ...] = (
            (first, second) if rng.random() < 0.5 else (second, first)
        )
        kind, count, position = "pair", 2, None
        relation = str(rng.choice(RELATIONS))
    else:
        objects = (_sample_object(rng, heldout=heldout),)
        kind, count, relation = "group", int(rng.choice(COUNTS)), None
        position = str(rng.choice(POSITIONS))
    background = str(rng.choice(BACKGROUNDS))
    if free_colour:  # its own stream, so the scene is otherwise the one drawn without it
        free = np.random.default_rng([seed, SPLITS.index(split), index, 5])
        if free.random() < free_colour and len({o.shape for o in objects}) == len(objects):
            objects = tuple(_unnamed_colour(o, free) for o in objects)
    scene = Scene(
        seed=scene_seed, split=split, kind=kind, objects=objects, count=count, position=position,
        relation=relation, background=background, captions=(), image_size=image_size,
    )
    captions = make_captions(scene, n_captions, np.random.default_rng([scene_seed, 1]),
                             generic_nouns=generic_nouns)
    return Scene(**{**scene.__dict__, "captions": captions})


def _sample_object(rng: np.random.Generator, *, heldout: bool | None) -> SceneObject:
    """heldout True: one of HELDOUT_PAIRS; False or None: any (colour, shape) but those."""
    while True:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if ((colour, shape) in HELDOUT_PAIRS) == bool(heldout):
            return SceneObject(shape=shape, colour=colour, size=str(rng.choice(SIZES)))


# Least RGB distance of an unnamed colour from every named one. Unnamed colours are drawn
# alike for every shape: a shape kept away from the colour it is held out in would teach its
# colour-free captions "never that colour", which the held-out scenes then all are.
_FREE_MIN_DISTANCE = 90.0


def _unnamed_colour(obj: SceneObject, rng: np.random.Generator) -> SceneObject:
    """`obj` in a random saturated colour far from every named colour (so it shows no held-out
    pair and is never a colour the captions leave unsaid) that leaves at least two background
    colours contrasting with it; its distribution is the same for every shape."""
    named = np.array(list(COLOURS.values()), dtype=np.float64)  # (n_colours, 3)
    while True:
        rgb = np.round(np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0),
                                                    rng.uniform(0.45, 0.95))) * 255)
        contrasting = sum(np.linalg.norm(rgb - c) >= _MIN_CONTRAST for c in _PALETTE)
        if np.linalg.norm(named - rgb, axis=1).min() >= _FREE_MIN_DISTANCE and contrasting >= 2:
            tint = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
            return SceneObject(shape=obj.shape, colour="", size=obj.size, tint=tint)


# ---------------------------------------------------------------------------------- captions
_COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_PLURALS = {"cross": "crosses"}
_POSITION_WORDS = {
    "left": ("on the left", "at the left side", "in the left half"),
    "right": ("on the right", "at the right side", "in the right half"),
    "top": ("at the top", "near the top", "in the upper half"),
    "bottom": ("at the bottom", "near the bottom", "in the lower half"),
    "centre": ("in the centre", "in the middle"),
}
_RELATION_WORDS = {
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
    "left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
}
_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
_BACKGROUND_WORDS = {
    "plain": ("a plain background", "a plain backdrop", "a flat background"),
    "gradient": ("a gradient background", "a smoothly shaded background"),
    "stripes": ("a striped background", "a stripy backdrop"),
    "noise": ("a noisy background", "a speckled background"),
    "wood": ("a wooden surface", "a wood grain background"),
    "marble": ("a marble surface", "a marble background"),
}
_GROUP_TEMPLATES = (
    "{obj} {pos} of {bg}", "{obj} {pos}, on {bg}", "a photo of {obj} {pos} of {bg}",
    "{bg} with {obj} {pos}", "{pos}, {obj} on {bg}", "there {be} {obj} {pos} of {bg}",
    "{obj} {pos}",
)
_PAIR_TEMPLATES = (
    "{a} {rel} {b}", "{a} {rel} {b} on {bg}", "{b} {inv} {a}, on {bg}",
    "a photo of {a} {rel} {b}", "{bg} with {a} {rel} {b}", "{b} {inv} {a}",
)


def make_captions(scene: Scene, n: int, rng: np.random.Generator, *,
                  generic_nouns: float = 0.0) -> tuple[str, ...]:
    """Up to `n` distinct true sentences about `scene` from varied templates (fewer only when the
    templates cannot make `n` different ones); a group caption calls the objects "shape(s)"
    with probability `generic_nouns`. An object of an unnamed colour is described without one.
    """
    captions: list[str] = []
    for _ in range(20 * n):
        text = (_group_caption(scene, rng, generic_nouns) if scene.kind == "group"
                else _pair_caption(scene, rng))
        if text not in captions:
            captions.append(text)
        if len(captions) == n:
            break
    return tuple(captions)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _group_caption(scene: Scene, rng: np.random.Generator, generic_nouns: float = 0.0) -> str:
    obj = scene.objects[0]
    shape = "shape" if generic_nouns and rng.random() < generic_nouns else obj.shape
    noun = shape if scene.count == 1 else _PLURALS.get(shape, shape + "s")
    size = _pick(rng, _SIZE_WORDS[obj.size]) + " " if rng.random() < 0.8 else ""
    count = _pick(rng, _COUNT_WORDS[scene.count])
    colour = obj.colour + " " if obj.colour else ""
    if count == "a" and (size + colour + noun)[0] in "aeiou":
        count = "an"
    words = {
        "obj": f"{count} {size}{colour}{noun}",
        "pos": _pick(rng, _POSITION_WORDS[scene.position or "centre"]),
        "bg": _pick(rng, _BACKGROUND_WORDS[scene.background]),
        "be": "is" if scene.count == 1 else "are",
    }
    return _pick(rng, _GROUP_TEMPLATES).format(**words)


def _object_phrase(obj: SceneObject, rng: np.random.Generator) -> str:
    size = _pick(rng, _SIZE_WORDS[obj.size]) + " " if rng.random() < 0.5 else ""
    colour = obj.colour + " " if obj.colour else ""
    article = "an" if (size + colour + obj.shape)[0] in "aeiou" else "a"
    return f"{article} {size}{colour}{obj.shape}"


def _pair_caption(scene: Scene, rng: np.random.Generator) -> str:
    relation = scene.relation or "above"
    words = {
        "a": _object_phrase(scene.objects[0], rng),
        "b": _object_phrase(scene.objects[1], rng),
        "rel": _pick(rng, _RELATION_WORDS[relation]),
        "inv": _pick(rng, _RELATION_WORDS[_INVERSE[relation]]),
        "bg": _pick(rng, _BACKGROUND_WORDS[scene.background]),
    }
    return _pick(rng, _PAIR_TEMPLATES).format(**words)


# ---------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Placement:
    """Where one object is drawn: centre (x, y) and radius r as fractions of the image side,
    rotation in degrees."""

    obj: SceneObject
    x: float
    y: float
    r: float
    angle: float


def layout(scene: Scene) -> tuple[Placement, ...]:
    """The objects' placements, non-overlapping (gap >= 0.04 of the side), from `scene.seed`."""
    rng = np.random.default_rng([scene.seed, 2])
    return _group_layout(scene, rng) if scene.kind == "group" else _pair_layout(scene, rng)


def _radius(obj: SceneObject, rng: np.random.Generator) -> float:
    mean, jitter = _RADIUS[obj.size]
    return float(mean + rng.uniform(-jitter, jitter))


def _arrangements(count: int, step: float) -> list[np.ndarray]:
    """Candidate (count, 2) centre offsets with neighbours `step` apart."""
    if count == 1:
        return [np.zeros((1, 2))]
    if count == 2:
        d = step / 2
        e = d / math.sqrt(2)
        return [np.array([[-d, 0], [d, 0]]), np.array([[0, -d], [0, d]]),
                np.array([[-e, -e], [e, e]]), np.array([[-e, e], [e, -e]])]
    h = step * math.sqrt(3) / 2
    return [np.array([[-step, 0], [0, 0], [step, 0]]), np.array([[0, -step], [0, 0], [0, step]]),
            np.array([[0, -h / 2], [-step / 2, h / 2], [step / 2, h / 2]]),
            np.array([[0, h / 2], [-step / 2, -h / 2], [step / 2, -h / 2]])]


# Allowed group bounding box per position: (x0, x1, y0, y1) and the range of the box centre.
_REGIONS = {
    "left": ((0.03, 0.47, 0.03, 0.97), (0.0, 1.0, 0.35, 0.65)),
    "right": ((0.53, 0.97, 0.03, 0.97), (0.0, 1.0, 0.35, 0.65)),
    "top": ((0.03, 0.97, 0.03, 0.47), (0.35, 0.65, 0.0, 1.0)),
    "bottom": ((0.03, 0.97, 0.53, 0.97), (0.35, 0.65, 0.0, 1.0)),
    "centre": ((0.05, 0.95, 0.05, 0.95), (0.44, 0.56, 0.44, 0.56)),
}


def _group_layout(scene: Scene, rng: np.random.Generator) -> tuple[Placement, ...]:
    obj = scene.objects[0]
    r = _radius(obj, rng)
    (x0, x1, y0, y1), (cx0, cx1, cy0, cy1) = _REGIONS[scene.position or "centre"]
    feasible = []
    for offsets in _arrangements(scene.count, 2 * r + _GAP):
        offsets = offsets + rng.uniform(-0.005, 0.005, offsets.shape)
        offsets -= (offsets.min(axis=0) + offsets.max(axis=0)) / 2  # bounding box centred on 0
        half = np.abs(offsets).max(axis=0) + r  # (2,) half extents of the group
        lo_x, hi_x = max(x0 + half[0], cx0), min(x1 - half[0], cx1)
        lo_y, hi_y = max(y0 + half[1], cy0), min(y1 - half[1], cy1)
        if lo_x <= hi_x and lo_y <= hi_y:
            feasible.append((offsets, (lo_x, hi_x), (lo_y, hi_y)))
    if not feasible:  # cannot happen with the radii above; a guard for edits to them
        raise InvalidInputError(f"no layout fits {scene.count} {obj.size} objects {scene.position}")
    offsets, x_range, y_range = feasible[int(rng.integers(len(feasible)))]
    centre = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
    return tuple(
        Placement(obj, float(x), float(y), r, _angle(obj, rng)) for x, y in offsets + centre
    )


def _pair_layout(scene: Scene, rng: np.random.Generator) -> tuple[Placement, ...]:
    first, second = scene.objects
    r1, r2 = _radius(first, rng), _radius(second, rng)
    distance = r1 + r2 + rng.uniform(_GAP + 0.02, 0.2)
    axis = np.array({"above": (0, 1), "below": (0, -1), "left of": (1, 0), "right of": (-1, 0)}[
        scene.relation or "above"], dtype=float)  # from the first object to the second
    slip = rng.uniform(-0.04, 0.04) * axis[::-1]  # small sideways offset of the second object
    p1, p2 = np.zeros(2), axis * distance + slip
    lo = np.minimum(p1 - r1, p2 - r2)
    hi = np.maximum(p1 + r1, p2 + r2)
    shift = np.array([rng.uniform(0.04 - lo[i], 0.96 - hi[i]) for i in range(2)])
    x1, y1 = (p1 + shift).tolist()
    x2, y2 = (p2 + shift).tolist()
    return (
        Placement(first, x1, y1, r1, _angle(first, rng)),
        Placement(second, x2, y2, r2, _angle(second, rng)),
    )


def _angle(obj: SceneObject, rng: np.random.Generator) -> float:
    return 0.0 if obj.shape == "circle" else float(rng.uniform(-8, 8))


# ---------------------------------------------------------------------------------- drawing
def _unit_polygon(shape: str) -> np.ndarray:
    """(m, 2) outline of `shape` around (0, 0) with radius about 1 (y points down)."""
    def ring(m: int, radius: float, phase: float) -> np.ndarray:
        t = phase + 2 * math.pi * np.arange(m) / m
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)

    if shape == "square":
        return np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])
    if shape == "triangle":
        return ring(3, 1.15, -math.pi / 2) + [0, 0.15]
    if shape == "star":
        outer, inner = ring(5, 1.15, -math.pi / 2), ring(5, 0.48, -math.pi / 2 + math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "diamond":
        return np.array([[0, -1.15], [0.8, 0], [0, 1.15], [-0.8, 0]])
    if shape == "hexagon":
        return ring(6, 1.0, 0.0)
    if shape == "cross":
        a, b = 0.34, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y - 2.5], axis=1) / 15.5
    return ring(64, 1.0, 0.0)  # circle


def _object_mask(
    placement: Placement, side: int, box: tuple[int, int, int, int], offset: float = 0.0
) -> np.ndarray:
    """(h, w) float32 in [0, 1]: coverage of the object inside `box` = (x0, y0, x1, y1) pixels of
    the side x side canvas, the object shifted right and down by `offset` radii."""
    theta = math.radians(placement.angle)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    radius = placement.r * side
    points = _unit_polygon(placement.obj.shape) @ rotation.T * radius
    points += np.array([placement.x * side + offset * radius - box[0],
                        placement.y * side + 1.4 * offset * radius - box[1]])
    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points.tolist()], fill=255)
    if offset:  # a shadow: soft edges
        mask = mask.filter(ImageFilter.GaussianBlur(0.2 * radius))
    return np.asarray(mask, dtype=np.float32) / 255


def _paint(canvas: np.ndarray, placement: Placement, colour: np.ndarray) -> None:
    """Draw one object, its shadow and its highlight into `canvas` (side, side, 3) float32 in
    place, touching only the box around the object."""
    side = canvas.shape[0]
    cx, cy, pad = placement.x * side, placement.y * side, 2.0 * placement.r * side + 2
    box = (max(int(cx - pad), 0), max(int(cy - pad), 0),
           min(int(cx + pad) + 1, side), min(int(cy + pad) + 1, side))
    region = canvas[box[1]:box[3], box[0]:box[2]]  # (h, w, 3) view
    region *= 1 - 0.35 * _object_mask(placement, side, box, offset=0.25)[..., None]
    yy, xx = np.mgrid[box[1]:box[3], box[0]:box[2]].astype(np.float32) / side
    # A highlight towards the top left of the object: brightness from 1.15 down to 0.9.
    towards_light = ((placement.x - xx) + (placement.y - yy)) / (2 * placement.r)
    light = np.clip(1.025 + 0.125 * towards_light, 0.9, 1.15)[..., None]
    mask = _object_mask(placement, side, box)[..., None]
    region[...] = region * (1 - mask) + np.minimum(colour * light, 255) * mask


def render(scene: Scene) -> Image.Image:
    """Draw `scene` as an RGB image of scene.image_size pixels a side; deterministic in the scene.

    Drawn at twice the size and reduced (anti-aliasing), with a soft shadow and a highlight on each
    object and a little sensor noise, so that it looks more like a photo than a diagram.
    """
    rng = np.random.default_rng([scene.seed, 3])
    side = 2 * scene.image_size
    placements = layout(scene)
    object_colours = [_jitter(p.obj.rgb(), rng, 10) for p in placements]
    canvas = _background(scene.background, side, rng, object_colours)  # (side, side, 3) float32
    for placement, colour in zip(placements, object_colours, strict=True):
        _paint(canvas, placement, colour)
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).resize(
        (scene.image_size, scene.image_size), Image.Resampling.LANCZOS)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 2.5, (*image.size[::-1], 3))
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.array(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """(side, side) float32 smooth value noise, about unit variance, `cells` blobs a side."""
    grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)


def _turbulence(rng: np.random.Generator, side: int, cells: tuple[int, ...]) -> np.ndarray:
    """Octaves of value noise, each finer one at half the amplitude of the one before."""
    return sum(_noise(rng, side, n) / 2**k for k, n in enumerate(cells))


def _background(
    kind: str, side: int, rng: np.random.Generator, object_colours: list[np.ndarray]
) -> np.ndarray:
    """(side, side, 3) float32 RGB in [0, 255] of the given kind, contrasting with the objects."""
    choices = [c for c in _PALETTE
               if all(np.linalg.norm(np.subtract(c, o)) >= _MIN_CONTRAST for o in object_colours)]
    if not choices:  # two unnamed colours may leave none: the one that contrasts most
        choices = [max(_PALETTE, key=lambda c: min(
            np.linalg.norm(np.subtract(c, o)) for o in object_colours))]
    base = _jitter(choices[int(rng.integers(len(choices)))], rng, 8)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side  # (side, side) in [0, 1)
    theta = rng.uniform(0, math.pi)
    along = xx * math.cos(theta) + yy * math.sin(theta)  # (side, side) projection on a direction
    if kind == "plain":
        shade = 1.0 - 0.12 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)  # a faint vignette
    elif kind == "gradient":
        shade = 1.18 - 0.4 * (along - along.min()) / (along.max() - along.min())
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.2)
        shade = 1.0 - 0.1 * (1 + np.tanh(4 * np.sin(2 * math.pi * along / period)))
    elif kind == "noise":
        shade = 1.0 + 0.1 * _noise(rng, side, 12) + 0.06 * rng.standard_normal((side, side))
    elif kind == "wood":
        return _wood(rng, side, yy, xx)
    elif kind == "marble":
        return _marble(rng, side, along)
    else:
        known = ", ".join(BACKGROUNDS)
        raise InvalidInputError(f"unknown background {kind!r}; choose one of {known}")
    return np.clip(base * shade[..., None].astype(np.float32), 0, 255)


def _wood(rng: np.random.Generator, side: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    light, dark = _jitter((195, 155, 110), rng, 12), _jitter((140, 100, 65), rng, 10)
    cx, cy = rng.uniform(-1.5, 2.5), rng.uniform(-3, -1.5)  # rings centred far off the picture
    distance = np.sqrt(((xx - cx) * 0.35) ** 2 + (yy - cy) ** 2)
    rings = np.sin(distance * rng.uniform(40, 70) + 1.5 * _turbulence(rng, side, (4, 8, 16, 32)))
    t = (0.5 + 0.5 * rings) ** 2 + 0.05 * _noise(rng, side, 64)  # (side, side) mostly in [0, 1]
    return np.clip(light + (dark - light) * t[..., None], 0, 255).astype(np.float32)


def _marble(rng: np.random.Generator, side: int, along: np.ndarray) -> np.ndarray:
    stone, vein = _jitter((190, 188, 180), rng, 8), _jitter((105, 110, 115), rng, 10)
    veins = np.abs(np.sin(along * rng.uniform(8, 16) + 2.0 * _turbulence(rng, side, (3, 6, 12))))
    t = (1 - veins) ** 6  # thin dark veins where the sine crosses zero
    return np.clip(stone + (vein - stone) * t[..., None], 0, 255).astype(np.float32)


# ---------------------------------------------------------------------------------- files
def write_collection(
    folder: str | Path,
    n: int,
    *,
    seed: int,
    split: str = "train",
    image_size: int = 128,
    captions_per_scene: int = 5,
    image_format: str = "jpg",
    workers: int = 1,
    progress: bool = False,
    free_colour: float = 0.0,
    generic_nouns: float = 0.0,
) -> Path:
    """Write `n` scenes as a collection and return `folder` (a bar on stderr with `progress`).

    Layout (as /work/shared's flickr8k-1k): `folder/images/scene-00000.jpg`, ...;
    `folder/captions.csv` with columns `image,caption` (one row per caption, image names relative
    to `images/`); `folder/scenes.csv` with SCENE_COLUMNS, one row per image, for recall broken
    down by attribute. Existing files of the same names are overwritten. `workers` > 1 renders in
    that many processes (the files are the same). `free_colour`, `generic_nouns`: see
    `generate_scenes`; an unnamed colour's `colour` column is empty.
    """
    if image_format not in ("jpg", "png"):
        raise InvalidInputError(f"image_format must be jpg or png, not {image_format!r}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    scenes = generate_scenes(
        n, seed=seed, split=split, image_size=image_size, captions_per_scene=captions_per_scene,
        free_colour=free_colour, generic_nouns=generic_nouns,
    )
    names = [f"scene-{i:05d}.{image_format}" for i in range(n)]
    jobs = [(folder / "images" / name, scene) for name, scene in zip(names, scenes, strict=True)]
    bar = progress_bar(n, desc="scenes", unit="scene", enabled=progress)
    if workers > 1 and n > 1:
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()  # fork: no `__main__` guard needed
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_image, jobs, chunksize=64):
                bar.update(1)
    else:
        for job in jobs:
            _write_image(job)
            bar.update(1)
    bar.close()
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([name, caption] for name, scene in zip(names, scenes, strict=True)
                         for caption in scene.captions)
    with open(folder / "scenes.csv", "w", newline="", encoding="utf-8") as handle:
        scene_writer = csv.DictWriter(handle, fieldnames=list(SCENE_COLUMNS))
        scene_writer.writeheader()
        scene_writer.writerows(
            {"image": name, **scene.attributes()}
            for name, scene in zip(names, scenes, strict=True)
        )
    return folder


def _write_image(job: tuple[Path, Scene]) -> None:
    path, scene = job
    options = {"quality": 92} if path.suffix == ".jpg" else {"optimize": False}
    render(scene).save(path, **options)


def read_scene_attributes(folder: str | Path) -> dict[str, dict[str, str]]:
    """`folder/scenes.csv` as {image name: {column: value}} (columns SCENE_COLUMNS but `image`)."""
    path = Path(folder) / "scenes.csv"
    if not path.is_file():
        raise InvalidInputError(f"{path} not found; write the collection with write_collection()")
    with open(path, newline="", encoding="utf-8") as handle:
        return {row.pop("image"): row for row in csv.DictReader(handle)}
