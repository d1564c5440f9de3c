"""The catalog: files, texts, models and durable vectors in SQL (SQLite by default)."""

from searchengine.catalog.records import NewImage, Skip, StoredFile
from searchengine.catalog.store import Catalog, head_revision
from searchengine.catalog.vectors import SqlVectorStore, VectorStore, as_stored

__all__ = [
    "Catalog",
    "NewImage",
    "Skip",
    "SqlVectorStore",
    "StoredFile",
    "VectorStore",
    "as_stored",
    "head_revision",
]
