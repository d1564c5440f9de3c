"""The catalog side of search filters and of the metadata refresh: SQL over `media`.

`matching_ids` turns a `SearchFilter` into the ids a filtered vector search may answer with: the
conditions run in SQL (indexed where an index helps: taken_at, folder, gps), and the three that
SQL cannot say exactly are finished in Python on the rows it returns: the folder's case (SQLite's
LIKE ignores ASCII case), a camera text beyond ASCII (SQLite's lower() folds ASCII only), and
the exact great-circle distance inside the bounding box that `near` prefilters with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import and_, func, or_, select, update

from searchengine.catalog.schema import Media
from searchengine.catalog.statements import chunks, folder_set, is_under, metadata_values, under
from searchengine.catalog.store import Catalog
from searchengine.exif import METADATA_VERSION
from searchengine.images import ImageInfo
from searchengine.query.filters import Conditions, SearchFilter, bounding_box, haversine_km

BOX_MARGIN = 1e-6  # degrees (about 0.1 m) around the bounding box: rounding never drops an edge


def matching_ids(catalog: Catalog, search_filter: SearchFilter) -> np.ndarray:
    """(a,) int64 ids, ascending, of the catalogued photos that pass every condition of
    `search_filter` (whether a model holds a vector of each is the vector index's to say:
    `index.search.held_ids`). Core rows, not ORM objects: a broad filter returns most ids."""
    filters = search_filter.checked()
    conditions = []
    columns: list = [Media.id]  # the id, then what `_finish` checks
    if filters.after is not None:
        conditions.append(Media.taken_at >= filters.after)
    if filters.before is not None:
        conditions.append(Media.taken_at <= filters.before)
    if filters.formats:
        conditions.append(Media.format.in_(filters.formats))
    camera = filters.camera
    camera_text = func.lower(func.coalesce(Media.camera_make, "") + " "
                             + func.coalesce(Media.camera, ""))
    if camera is not None:
        if camera.isascii():
            conditions.append(camera_text.contains(camera.lower(), autoescape=True))
        else:
            conditions.append(or_(Media.camera_make.is_not(None), Media.camera.is_not(None)))
            columns += [Media.camera_make, Media.camera]
    if filters.folder is not None:
        conditions.append(under(Media.folder, [filters.folder]))
        columns.append(Media.folder)
    if filters.near is not None:
        low, high, ranges = bounding_box(filters.near)
        conditions.append(Media.gps_lat.between(low - BOX_MARGIN, high + BOX_MARGIN))
        conditions.append(or_(*(Media.gps_lon.between(west - BOX_MARGIN, east + BOX_MARGIN)
                                for west, east in ranges)))
        columns += [Media.gps_lat, Media.gps_lon]
    query = select(*columns).where(and_(*conditions)).order_by(Media.id)
    with catalog.session() as session:
        rows = session.connection().execute(query)
        if len(columns) == 1:
            return np.fromiter(rows.scalars(), dtype=np.int64)
        return _finish(rows.all(), filters)


def _finish(rows: Sequence, filters: Conditions) -> np.ndarray:
    """The ids of `rows` (id first, then the columns `matching_ids` added) that pass the
    conditions SQL could only approximate."""
    keep = np.ones(len(rows), dtype=bool)
    if filters.camera is not None and not filters.camera.isascii():
        needle = filters.camera.casefold()
        keep &= np.fromiter((needle in f"{row.camera_make or ''} {row.camera or ''}".casefold()
                             for row in rows), dtype=bool, count=len(rows))
    if filters.folder is not None:
        folders = folder_set([filters.folder])
        keep &= np.fromiter((is_under(row.folder, folders) for row in rows), dtype=bool,
                            count=len(rows))
    if filters.near is not None and len(rows):
        near = filters.near
        latitudes = np.fromiter((row.gps_lat for row in rows), dtype=np.float64, count=len(rows))
        longitudes = np.fromiter((row.gps_lon for row in rows), dtype=np.float64, count=len(rows))
        keep &= haversine_km(near.latitude, near.longitude, latitudes, longitudes) <= near.radius_km
    ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
    return ids[keep]


def stale_metadata(catalog: Catalog, paths: Sequence[str]) -> set[str]:
    """The catalogued `paths` whose metadata columns come from an older extraction than
    `exif.METADATA_VERSION` (NULL: a row from before revision 0004, or imported)."""
    stale: set[str] = set()
    with catalog.session() as session:
        for chunk in chunks(list(paths)):
            stale.update(session.scalars(
                select(Media.path).where(
                    Media.path.in_(chunk),
                    or_(Media.metadata_version.is_(None),
                        Media.metadata_version < METADATA_VERSION))))
    return stale


def write_metadata(catalog: Catalog, found: Sequence[tuple[int, ImageInfo]]) -> None:
    """Store the metadata read again for files whose content is unchanged: (media id, info)
    pairs, one transaction (an UPDATE by primary key, run for all rows at once); their vectors
    and their other columns stay as they are. An id removed meanwhile is left alone."""
    if not found:
        return
    with catalog.session() as session, session.begin():
        paths: dict[int, str] = {}
        for chunk in chunks([media_id for media_id, _ in found]):
            found_paths = session.execute(select(Media.id, Media.path)
                                          .where(Media.id.in_(chunk)))
            paths.update({row.id: row.path for row in found_paths})
        rows = [
            {"id": media_id, "taken_at": info.taken_at, "camera": info.camera,
             "width": info.width, "height": info.height, "format": info.format}
            | metadata_values(paths[media_id], info)
            for media_id, info in found
            if media_id in paths
        ]
        if rows:
            session.execute(update(Media), rows)
