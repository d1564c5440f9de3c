"""Near-duplicates: groups of photos whose stored vectors are nearly identical (burst shots,
resized copies, re-encoded exports), each photo with what a person needs to keep the best one.

Photos that share a content hash (exact copies) are one group whatever their vectors; the rest
are joined by `index.components.near_components` (the space's own k-NN search). Reads only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.index.components import Components, near_components
from searchengine.index.search import space_vectors
from searchengine.index.spaces import VectorSpace
from searchengine.paths import path_fields
from searchengine.settings import DUPLICATE_THRESHOLD as DEFAULT_THRESHOLD


@dataclass(frozen=True)
class DuplicatePhoto:
    """One photo of a group; `score` is its cosine with the group's first photo (1 for it)."""

    id: int
    path: str
    size: int  # bytes
    width: int
    height: int
    taken_at: datetime | None
    score: float
    same_content: bool = False  # its file is byte for byte that of the group's first photo

    def as_dict(self) -> dict:
        return {"id": self.id} | path_fields(self.path) | {
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "score": round(self.score, 6),
            "same_content": self.same_content,
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Photos that are near-copies of each other: the best first (most pixels, then the largest
    file, then the lowest id), the others by score, highest first."""

    photos: list[DuplicatePhoto]

    def as_dict(self) -> dict:
        return {"photos": [photo.as_dict() for photo in self.photos]}


@dataclass(frozen=True)
class DuplicateReport:
    """What `Engine.duplicates` found among the `photos` vectors of `model`."""

    model: str
    threshold: float
    photos: int  # photos compared (those with a vector of `model`)
    groups: list[DuplicateGroup]  # most photos first

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "threshold": self.threshold,
            "photos": self.photos,
            "groups": [group.as_dict() for group in self.groups],
        }


def check_threshold(threshold: float) -> float:
    """A cosine threshold in [-1, 1] as a float; InvalidInputError otherwise."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not -1.0 <= value <= 1.0:  # also refuses NaN
        raise InvalidInputError(
            f"threshold {threshold!r} is not a cosine similarity: give a number from -1 to 1 "
            f"(near-duplicates are about {DEFAULT_THRESHOLD} and above)"
        )
    return value


def duplicate_groups(space: VectorSpace, threshold: float) -> DuplicateReport:
    """The groups of near-duplicate photos of an image `space` at cosine >= `threshold`."""
    threshold = check_threshold(threshold)
    catalog, model_id = space.catalog, space.model.id
    ids = catalog.vector_ids("image", model_id)  # (n,) int64 ascending
    copies = Components(len(ids))
    exact = catalog.same_content(model_id)
    for members in exact:
        at = np.searchsorted(ids, np.asarray(members, dtype=np.int64))
        copies.union(np.full(len(at) - 1, at[0]), at[1:])
    found = near_components(
        space.index,
        ids,
        catalog.iter_vectors("image", model_id),
        threshold,
        vectors_of=space_vectors(space),
        components=copies,
    )
    same = {i: n for n, members in enumerate(exact) for i in members}
    groups = [_group(space, ids[positions], same) for positions in found.groups()]
    groups = [group for group in groups if len(group.photos) > 1]
    groups.sort(key=lambda g: (-len(g.photos), g.photos[0].path))
    return DuplicateReport(space.model.spec, threshold, len(ids), groups)


def _group(space: VectorSpace, members: np.ndarray, same: dict[int, int]) -> DuplicateGroup:
    """A group from its (m,) int64 ids: catalog rows, and cosines with the best photo computed
    in float64 from the stored vectors (each made unit length again)."""
    rows = space.catalog.media(members.tolist())
    found, vectors = space.catalog.vectors("image", space.model.id, ids=sorted(rows))
    units = vectors.astype(np.float64)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    ranked = sorted(
        (rows[int(i)] for i in found),
        key=lambda m: (-(m.width * m.height), -m.size, m.id),
    )
    if not ranked:
        return DuplicateGroup([])
    where = {int(i): n for n, i in enumerate(found)}
    best = ranked[0]
    scores = units @ units[where[best.id]]  # (m,) float64
    photos = [
        DuplicatePhoto(
            m.id, m.path, m.size, m.width, m.height, m.taken_at,
            1.0 if m is best else float(scores[where[m.id]]),
            same_content=m is not best and same.get(m.id, -1) == same.get(best.id, -2),
        )
        for m in ranked
    ]
    photos[1:] = sorted(photos[1:], key=lambda p: (-p.score, p.id))
    return DuplicateGroup(photos)
