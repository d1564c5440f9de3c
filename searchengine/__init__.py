"""searchengine: cross-modal (CLIP) vector search over photo folders.

`Engine` is imported lazily so that `import searchengine` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchengine.errors import SearchEngineError

if TYPE_CHECKING:
    from searchengine.engine import Engine, SearchHit, SearchResult
    from searchengine.query.filters import SearchFilter

__all__ = ["Engine", "SearchEngineError", "SearchFilter", "SearchHit", "SearchResult"]


def __getattr__(name: str):
    if name in ("Engine", "SearchHit", "SearchResult"):
        from searchengine import engine

        return getattr(engine, name)
    if name == "SearchFilter":
        from searchengine.query.filters import SearchFilter

        return SearchFilter
    raise AttributeError(f"module 'searchengine' has no attribute {name!r}")
