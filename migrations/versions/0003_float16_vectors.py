"""Vectors are stored as float16: half the bytes of float32 (1 KB instead of 2 KB at 512-d)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:50:00.000000

The BLOBs of image_embeddings and text_embeddings are rewritten in place, one model and one
batch of ids at a time (a keyset query `id > last ORDER BY id LIMIT n`), so memory holds one
batch however large the catalog; the whole revision is still one transaction. A row's form is
told by its length against its model's dimension (4 bytes a value before, 2 after), so rows
already in the target form are left alone. The downgrade widens float16 back to float32
exactly (the values stay those rounded by the upgrade).

The schema itself does not change. SQLite keeps the freed pages inside the file: run
`sqlite3 catalog.sqlite VACUUM` once to give the space back to the disk. Index files carry the
catalog revision in their manifest, so every index is rebuilt from the catalog's (now float16)
vectors the next time it is opened.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

from searchengine.errors import CatalogError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 2000  # rows a statement: 4 MB of float32 BLOBs at 512-d
TABLES = (("image_embeddings", "media_id"), ("text_embeddings", "text_id"))


def upgrade() -> None:
    _convert(np.dtype("<f4"), np.dtype("<f2"))


def downgrade() -> None:
    _convert(np.dtype("<f2"), np.dtype("<f4"))


def _convert(source: np.dtype, target: np.dtype) -> None:
    connection = op.get_bind()
    models = connection.execute(sa.text("SELECT id, dim FROM models ORDER BY id")).all()
    for table, key in TABLES:
        select = sa.text(
            f"SELECT {key}, vector FROM {table} WHERE model_id = :model AND {key} > :last "
            f"ORDER BY {key} LIMIT :limit"
        )
        update = sa.text(f"UPDATE {table} SET vector = :vector WHERE {key} = :id AND "
                         "model_id = :model")
        for model_id, dim in models:
            last = -1
            while True:
                rows = connection.execute(
                    select, {"model": model_id, "last": last, "limit": BATCH}
                ).all()
                if not rows:
                    break
                changed = [
                    {"id": row[0], "model": model_id, "vector": _recast(row[1], dim, source,
                                                                        target, table)}
                    for row in rows
                    if len(row[1]) != dim * target.itemsize
                ]
                if changed:
                    connection.execute(update, changed)
                last = rows[-1][0]


def _recast(data: bytes, dim: int, source: np.dtype, target: np.dtype, table: str) -> bytes:
    if len(data) != dim * source.itemsize:
        raise CatalogError(
            f"a vector in {table} has {len(data)} bytes, neither {dim} float32 nor float16 "
            "values of its model; the catalog was changed outside searchengine: restore it from a "
            "backup, or index the folders again into a new home (--home)"
        )
    return np.frombuffer(data, dtype=source).astype(np.float32).astype(target).tobytes()
