"""Search within one folder: the photos catalogued under it, as FAISS' allowed ids.

`searchengine search QUERY --in FOLDER` (rclip's habit) indexes the folder and then searches
only the photos below it; the folder's ids go into the vector search (`index.search`'s filtered
search), so asking for k hits returns k whenever k photos lie under the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from searchengine.catalog import Catalog
from searchengine.errors import InvalidInputError
from searchengine.index.search import search_space
from searchengine.index.spaces import VectorSpace
from searchengine.paths import catalog_path
from searchengine.query.hits import rerank
from searchengine.query.results import SearchHit


def check_folder(folder: str | Path) -> str:
    """The folder as the catalog names paths; InvalidInputError when it is missing or a file."""
    path = Path(catalog_path(folder))
    if not path.exists():
        raise InvalidInputError(f"{folder} does not exist; give an existing folder")
    if not path.is_dir():
        raise InvalidInputError(f"{folder} is a file; --in takes a folder")
    return str(path)


def media_ids_under(catalog: Catalog, folder: str | Path) -> np.ndarray:
    """(n,) int64 sorted ids of the catalogued photos at or below `folder` (links are not
    resolved: the folder is matched as the catalog names paths, `paths.catalog_path`)."""
    found = catalog.files_under([catalog_path(folder)])
    return np.sort(np.fromiter((f.id for f in found.values()), dtype=np.int64, count=len(found)))


def folder_hits(
    catalog: Catalog,
    space: VectorSpace,
    vector: np.ndarray,
    allowed_ids: np.ndarray,
    k: int,
    offset: int,
) -> list[SearchHit]:
    """The images among (n,) int64 `allowed_ids` closest to a (1, d) float32 unit `vector`:
    hits `offset + 1` to `offset + k` with their paths (none when no id is allowed)."""
    if k < 1 or offset < 0:
        raise InvalidInputError("k must be >= 1 and offset >= 0")
    if not len(allowed_ids):
        return []
    D, I = search_space(space, vector, k + offset, allowed_ids=allowed_ids)
    media = catalog.media(int(i) for i in I[0] if i >= 0)
    hits = [
        SearchHit(rank, float(score), int(i), path=media[int(i)].path)
        for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
        if i >= 0 and int(i) in media
    ]
    return rerank(hits[offset:], start=offset + 1)
