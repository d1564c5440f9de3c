"""The catalog: files, texts, models and durable vectors in SQL (SQLite by default)."""

from searchengine.catalog.store import Catalog, NewImage, Skip, StoredFile, head_revision

__all__ = ["Catalog", "NewImage", "Skip", "StoredFile", "head_revision"]
