"""The catalog: files, texts, models and durable vectors in SQL (SQLite by default)."""

from searchengine.catalog.records import NewImage, Skip, StoredFile
from searchengine.catalog.store import INDEX_REVISION, Catalog, head_revision
from searchengine.catalog.vectors import SqlVectorStore, VectorStore, as_stored

__all__ = [
    "INDEX_REVISION",
    "Catalog",
    "NewImage",
    "Skip",
    "SqlVectorStore",
    "StoredFile",
    "VectorStore",
    "as_stored",
    "head_revision",
]
