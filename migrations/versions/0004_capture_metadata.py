"""media: capture metadata for search filters (time offset, make, lens, GPS, folder)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 16:45:00.000000

New columns of `media`, all nullable: taken_offset, camera_make, lens, gps_lat, gps_lon, folder
and metadata_version, with the indexes the filters use (folder; gps_lat, gps_lon). `folder` is
filled here from each row's path (the text before its last slash, in batches of ids); the EXIF
fields stay NULL with metadata_version NULL, and the next `searchengine index` of a folder reads
them from the files it finds unchanged (their headers only: nothing is decoded or embedded
again). Vectors and ids do not change, so index files built at 0003 stay valid
(`catalog.store.INDEX_REVISION`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BATCH = 5000  # rows a statement
COLUMNS = ("taken_offset", "camera_make", "lens", "gps_lat", "gps_lon", "folder",
           "metadata_version")


def upgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.add_column(sa.Column("taken_offset", sa.String(length=6), nullable=True))
        batch_op.add_column(sa.Column("camera_make", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("lens", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("gps_lat", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gps_lon", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("folder", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("metadata_version", sa.Integer(), nullable=True))
        batch_op.create_index("ix_media_folder", ["folder"], unique=False)
        batch_op.create_index("ix_media_gps", ["gps_lat", "gps_lon"], unique=False)
    _fill_folders()


def _fill_folders() -> None:
    """folder = the stored path up to its last slash ("/" for a file at the root). The stored
    form of a path (`paths.to_stored`) codes characters one by one and never makes a slash, so
    the folder of the stored text is the stored text of the folder."""
    connection = op.get_bind()
    select = sa.text("SELECT id, path FROM media WHERE id > :last ORDER BY id LIMIT :limit")
    update = sa.text("UPDATE media SET folder = :folder WHERE id = :id")
    last = -1
    while True:
        rows = connection.execute(select, {"last": last, "limit": BATCH}).all()
        if not rows:
            break
        connection.execute(update, [{"id": row[0], "folder": row[1].rsplit("/", 1)[0] or "/"}
                                    for row in rows])
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("media", schema=None) as batch_op:
        batch_op.drop_index("ix_media_gps")
        batch_op.drop_index("ix_media_folder")
        for column in reversed(COLUMNS):
            batch_op.drop_column(column)
