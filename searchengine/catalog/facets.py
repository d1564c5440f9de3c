"""What a collection offers to filter on: its folders, cameras and the span of its dates.

The web page fills its folder picker, camera choice and date range from this (`GET
/api/facets`). A folder counts the photos under it at any depth, as the folder filter does, and
the list keeps the folders nearest the collection's roots when there are more than asked for.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from searchengine.catalog.schema import Media
from searchengine.catalog.store import Catalog
from searchengine.paths import display_path

MAX_FOLDERS = 500


@dataclass(frozen=True)
class Facets:
    """`folders` and `cameras` as (name, photo count), folders sorted by path and cameras by
    count; `first_taken`/`last_taken` the earliest and latest capture times (None without any)."""

    folders: list[tuple[str, int]]
    cameras: list[tuple[str, int]]
    first_taken: datetime | None
    last_taken: datetime | None

    def as_dict(self) -> dict:
        return {
            "folders": [{"folder": name, "count": count} for name, count in self.folders],
            "cameras": [{"camera": name, "count": count} for name, count in self.cameras],
            "first_taken": self.first_taken.isoformat() if self.first_taken else None,
            "last_taken": self.last_taken.isoformat() if self.last_taken else None,
        }


def collection_facets(catalog: Catalog, *, max_folders: int = MAX_FOLDERS) -> Facets:
    """The facets of every catalogued photo: one pass over the paths (streamed), two grouped
    queries. Folders are shown as `display_path` shows them (undecodable bytes as `\\xNN`)."""
    with catalog.session() as session:
        cameras = session.execute(
            select(Media.camera, func.count())
            .where(Media.camera.is_not(None))
            .group_by(Media.camera)
            .order_by(func.count().desc(), Media.camera)
        ).all()
        first, last = session.execute(select(func.min(Media.taken_at),
                                             func.max(Media.taken_at))).one()
        direct = Counter(os.path.dirname(path) for path in
                         session.scalars(select(Media.path).execution_options(yield_per=10_000)))
    return Facets(_folders(direct, max_folders), [(str(c), int(n)) for c, n in cameras],
                  first, last)


def media_fingerprint(catalog: Catalog) -> tuple:
    """Changes whenever photos are added, changed or removed: (count, last id, last indexing
    time), one aggregate query."""
    with catalog.session() as session:
        return tuple(session.execute(
            select(func.count(), func.max(Media.id), func.max(Media.indexed_at))
        ).one())


def _folders(direct: Counter[str], limit: int) -> list[tuple[str, int]]:
    """Each folder that holds photos, and each folder between it and the collection's common
    root, with the number of photos at any depth under it; at most `limit`, shallowest first."""
    if not direct:
        return []
    root = os.path.commonpath(list(direct))
    under: Counter[str] = Counter()
    for folder, count in direct.items():
        while True:
            under[folder] += count
            if folder == root or len(folder) <= len(root):
                break
            folder = os.path.dirname(folder)
    kept = sorted(under, key=lambda f: (f.count(os.sep), -under[f], f))[:limit]
    return [(display_path(f), under[f]) for f in sorted(kept)]
