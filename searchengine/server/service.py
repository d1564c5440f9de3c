"""The engine behind the HTTP API: one model, loaded at start, and one request at a time.

The Engine caches models and indexes in plain dicts and its catalog sessions are short, so the
server serialises engine calls behind a lock (torch already spreads one query over the cores).
Thumbnails and originals do not take the lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import timezone

from PIL import Image

from searchengine.engine import Classification, Engine, SearchResult
from searchengine.errors import NotIndexedError
from searchengine.paths import display_path, path_fields
from searchengine.server.errors import ApiError
from searchengine.server.media import MediaFiles
from searchengine.server.settings import ServerSettings
from searchengine.server.uploads import Upload

log = logging.getLogger(__name__)

ImageRef = int | Upload  # an indexed image's catalog id, or an uploaded image


class SearchService:
    """Every operation the API offers, on one engine and its pinned model."""

    def __init__(self, engine: Engine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.media = MediaFiles(engine.catalog, cache_bytes=settings.thumbnail_cache_bytes,
                                max_original_bytes=settings.max_original_bytes)
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        """The model requests use: the pinned one, else the home's default as it is now (one
        settings row read), so `use-model` takes effect without a restart. The engine's spaces
        follow what `index` and `remove` save (a stat of the manifest per request)."""
        return self.engine.model_id_of(self.settings.model)

    def warm_up(self) -> None:
        """Load the model and open its vector indexes now, so the first request is not slow."""
        with self._lock:
            self.engine.encoder(self.model)
            for modality in ("image", "text"):
                if self._vector_count(modality):
                    self.engine.space(self.model, modality)
                else:
                    log.warning("no %s vectors for %s in %s yet", modality, self.model,
                                self.engine.home)

    # -- searches ----------------------------------------------------------------------

    def search(self, query: str, *, limit: int, offset: int) -> SearchResult:
        with self._lock:
            return self.engine.search(query, k=limit, model=self.model, offset=offset)

    def search_upload(self, upload: Upload, *, limit: int, offset: int) -> SearchResult:
        with self._lock:
            result = self.engine.similar(upload.image, k=limit, model=self.model, offset=offset)
        return dataclasses.replace(result, query=upload.name)

    def similar(self, media_id: int, *, limit: int, offset: int) -> SearchResult:
        self.require_media(media_id)
        with self._lock:
            return self.engine.similar(media_id, k=limit, model=self.model, offset=offset)

    def lookup(self, image: ImageRef, *, limit: int, offset: int,
               text_set: str | None) -> SearchResult:
        if not self._vector_count("text"):
            raise NotIndexedError(
                f"no texts are indexed for model {self.model} in {self.engine.home}; run "
                f"`searchengine add-texts FILE.csv --model {self.model}` first")
        source, name = self._resolved(image)
        with self._lock:
            result = self.engine.lookup(source, k=limit, text_set=text_set, model=self.model,
                                        offset=offset)
        return dataclasses.replace(result, query=name)

    # -- single answers ------------------------------------------------------------------

    def classify(self, image: ImageRef, labels: list[str], *, templates: str) -> Classification:
        source, name = self._resolved(image)
        with self._lock:
            result = self.engine.classify(source, labels, templates=templates, model=self.model)
        return dataclasses.replace(result, image=name)

    def match(self, image: ImageRef, text: str) -> dict:
        source, name = self._resolved(image)
        with self._lock:
            score = self.engine.match(source, text, model=self.model)
        return {"image": display_path(name), "text": text, "model": self.model,
                "score": round(score, 6)}

    def status(self) -> dict:
        with self._lock:
            report = self.engine.status()
        return {**report.as_dict(), "serving_model": self.model}

    def info(self, media_id: int) -> dict:
        row = self.require_media(media_id)
        fields = ("id", "path", "size", "width", "height", "format", "camera")
        return {
            **{name: getattr(row, name) for name in fields},
            # EXIF time has no zone: shown as recorded; the catalog keeps local time, sent as UTC
            "taken_at": row.taken_at.isoformat() if row.taken_at else None,
            "indexed_at": row.indexed_at.astimezone(timezone.utc),
        } | path_fields(row.path)

    # -- helpers -------------------------------------------------------------------------

    def require_media(self, media_id: int):
        row = self.engine.catalog.media([media_id]).get(media_id)
        if row is None:
            raise ApiError(404, f"no catalogued image with id {media_id}")
        return row

    def _vector_count(self, modality: str) -> int:
        row = self.engine.catalog.find_model(self.model)
        return self.engine.catalog.count_vectors(modality, row.id) if row else 0

    def _resolved(self, image: ImageRef) -> tuple[int | Image.Image, str]:
        """(what the engine takes, a label): an id and its path, or an upload's decoded image
        (decoded once, in `read_upload`) and its display name."""
        if isinstance(image, Upload):
            return image.image, image.name
        row = self.require_media(image)
        return image, row.path
