"""The one exception family the library raises; the CLI turns each into a message and exit 1."""

from __future__ import annotations


class SearchEngineError(Exception):
    """Base class: every error the library raises on purpose, with a message a person can act on."""


class InvalidInputError(SearchEngineError):
    """A bad argument: empty query, missing path, malformed file, unknown option value."""


class ModelError(SearchEngineError):
    """A model spec that cannot be resolved or loaded (unknown architecture, tag, checkpoint)."""


class ModelUnavailableError(ModelError):
    """Weights exist in principle but cannot be had here (offline, not cached)."""


class NotIndexedError(SearchEngineError):
    """The operation needs vectors that have not been built yet."""


class IndexMismatchError(SearchEngineError):
    """A vector index file does not match its manifest or the catalog."""


class CatalogError(SearchEngineError):
    """The catalog cannot be opened, upgraded or written (locked, refused, corrupt)."""


class HomeBusyError(SearchEngineError):
    """Another process is writing to the home (it holds the home's writer lock)."""


class ImageDecodeError(SearchEngineError):
    """One file could not be turned into an image; the ingester records the reason and moves on."""


class ClusterError(SearchEngineError):
    """The distributed backend cannot run: Ray missing, a cluster unreachable, a pipeline failed."""
