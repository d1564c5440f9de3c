"""The catalog: files, texts, models and durable vectors in SQL (SQLite by default)."""

from searchengine.catalog.records import NewImage, Skip, StoredFile
from searchengine.catalog.store import Catalog, head_revision

__all__ = ["Catalog", "NewImage", "Skip", "StoredFile", "head_revision"]
