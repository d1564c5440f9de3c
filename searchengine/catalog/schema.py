"""The catalog's tables as SQLAlchemy 2.x models; changed only together with an Alembic revision."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from searchengine.paths import from_stored, to_stored

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class PathText(TypeDecorator):
    """A file path as TEXT. Bytes of a name that are not UTF-8 (lone surrogates in Python) are
    stored as reversible stand-ins (`searchengine.paths.to_stored`); equality, IN and prefix
    queries keep their meaning. The column stays plain TEXT: no schema change."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        return None if value is None else to_stored(value)

    def process_result_value(self, value: str | None, dialect) -> str | None:
        return None if value is None else from_stored(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Media(Base):
    """One image file. `id` is also its vector id in every image index (ids are never reused).

    The capture metadata (revision 0004, `searchengine.exif`): `taken_at` is the camera's local
    time as EXIF recorded it (naive) and `taken_offset` its UTC offset ("+02:00") when recorded;
    `camera` the model, `camera_make` the make; `gps_lat` / `gps_lon` decimal degrees; `folder`
    the parent folder of `path`. `metadata_version` says which extraction filled them
    (`exif.METADATA_VERSION`); NULL for rows from before 0004, filled by the next
    `index` without embedding again."""

    __tablename__ = "media"
    __table_args__ = (
        Index("ix_media_gps", "gps_lat", "gps_lon"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(PathText, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    camera: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime)
    taken_offset: Mapped[str | None] = mapped_column(String(6))
    camera_make: Mapped[str | None] = mapped_column(Text)
    lens: Mapped[str | None] = mapped_column(Text)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    folder: Mapped[str | None] = mapped_column(PathText, index=True)
    metadata_version: Mapped[int | None] = mapped_column(Integer)


class SkippedFile(Base):
    """A file that could not be indexed, with the reason; retried when its size or mtime change."""

    __tablename__ = "skipped_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(PathText, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime] = mapped_column(DateTime)


class EmbeddingModel(Base):
    """A model whose vectors live in this home; one vector space per (model, modality).

    `spec` is the model's key (`ModelSpec.id`, or `ModelSpec.key` for later contents of a
    checkpoint path); `content_hash` the BLAKE3 digest of the checkpoint file whose weights made
    the vectors (None for hub and random weights, and for rows written before revision 0002).
    """

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(Text, unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ImageEmbedding(Base):
    """The durable copy of an image vector: little-endian float16 bytes (since revision 0003;
    float32 before), a unit vector rounded (`catalog.vectors.as_stored`)."""

    __tablename__ = "image_embeddings"

    media_id: Mapped[int] = mapped_column(
        ForeignKey("media.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class TextItem(Base):
    """A text in a named set (captions, product descriptions); `id` is its vector id."""

    __tablename__ = "texts"
    __table_args__ = (
        UniqueConstraint("text_set", "text", name="uq_texts_text_set_text"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text_set: Mapped[str] = mapped_column(String(200), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TextEmbedding(Base):
    """The durable copy of a text vector, stored as image vectors are."""

    __tablename__ = "text_embeddings"

    text_id: Mapped[int] = mapped_column(
        ForeignKey("texts.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Setting(Base):
    """Small key-value settings of a home, e.g. the default model."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
