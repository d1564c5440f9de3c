"""The engine behind the HTTP API: one model, loaded at start, many requests at once.

Text searches hand their sentence to a `TextBatcher` (one encoder call for the sentences of many
requests) and search the vector index and the catalog in their own thread: FAISS searches of a
loaded index are thread-safe, and every catalog call opens its own session. Only opening a
space or a model takes a lock (`_open`), so that an index another process saved
(`changed_on_disk`) is read again once, while searches already under way finish on the copy
they hold. Work that embeds an upload or many sentences runs in the slow lane (`lanes.py`), and
its model calls wait, chunk by chunk, while the batcher has sentences to encode (`gate.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from datetime import timezone

from PIL import Image

from searchengine.catalog.facets import collection_facets, media_fingerprint
from searchengine.encoder import Encoder
from searchengine.engine import Classification, Engine, SearchResult
from searchengine.errors import NotIndexedError, SearchEngineError
from searchengine.index.spaces import VectorSpace
from searchengine.paths import display_path, path_fields
from searchengine.query.arithmetic import has_arithmetic
from searchengine.query.hits import check_query_text, image_result
from searchengine.query.images import stored_vector
from searchengine.query.inputs import check_media_id
from searchengine.server.batcher import TextBatcher
from searchengine.server.errors import ApiError
from searchengine.server.filters import Refinements
from searchengine.server.gate import ModelGate, gate_encoder, ungate_encoder, ungated_texts
from searchengine.server.lanes import Lanes
from searchengine.server.media import MediaFiles
from searchengine.server.settings import ServerSettings
from searchengine.server.uploads import Upload
from searchengine.server.watching import ServeWatcher

log = logging.getLogger(__name__)

RETRY_LOAD_SECONDS = 30  # a new default model that failed to load is tried again after this
ImageRef = int | Upload  # an indexed image's catalog id, or an uploaded image
NONE = Refinements()  # no filter, no threshold, best first


class SearchService:
    """Every operation the API offers, on one engine and its pinned model.

    Methods are blocking and thread-safe; the app runs them in `lanes` (fast or slow)."""

    def __init__(self, engine: Engine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.media = MediaFiles(engine.catalog, cache_bytes=settings.thumbnail_cache_bytes,
                                max_original_bytes=settings.max_original_bytes)
        self.batcher = TextBatcher(self._encode_texts, max_batch=settings.text_batch_size,
                                   max_wait=settings.text_batch_wait_ms / 1000)
        self.lanes = Lanes(fast_threads=settings.fast_threads, slow_threads=1)
        self.gate = ModelGate()  # one model call at a time, the batcher's first (`gate.py`)
        self._open = threading.Lock()
        self._gated: list[Encoder] = []  # encoders this server gated (`close` restores them)
        self._facets: tuple[tuple, dict] | None = None  # (catalog fingerprint, facets)
        self._facets_lock = threading.Lock()
        self._switching = threading.Lock()  # guards the model served and its loader
        self._serving: str | None = None  # the default model requests use (not pinned)
        self._loading: threading.Thread | None = None
        self._failed: tuple[str, float] = ("", 0.0)  # a default that failed to load, and when
        self.instance = secrets.token_hex(8)  # names this server run (`searchengine.serving`)
        self.watcher: ServeWatcher | None = None  # `serve --watch` (`start_watching`)

    @property
    def model(self) -> str:
        """The model requests use: the pinned one, else the home's default (one settings row
        read per request), so `use-model` and `tune` take effect without a restart. A new
        default is loaded (encoder and vector indexes) in the background while requests keep
        using the model served so far, and used from the first request after it is ready; the
        old model is still served only while its vectors are in the catalog. The engine's spaces
        follow what `index` and `remove` save (a stat of the manifest per request)."""
        wanted = self.engine.model_id_of(self.settings.model)
        if self.settings.model is not None or wanted == self._serving:
            return wanted
        with self._switching:
            serving = self._serving
            if serving is None or self.engine.catalog.find_model(serving) is None:
                self._serving = wanted  # nothing served yet, or gone: load it in this request
                return wanted
            failed, when = self._failed
            retry = failed != wanted or time.monotonic() - when > RETRY_LOAD_SECONDS
            if retry and (self._loading is None or not self._loading.is_alive()):
                self._loading = threading.Thread(target=self._load_default, args=(wanted,),
                                                 name="load-default-model", daemon=True)
                self._loading.start()
            return serving

    def _load_default(self, wanted: str) -> None:
        """Load a new default model's encoder and open its vector indexes (the slow part of a
        switch, off the request threads), then serve it."""
        try:
            self.engine.encoder(wanted)  # outside `_open`: requests keep opening their spaces
            self._open_model(wanted)
        except (SearchEngineError, OSError, RuntimeError) as error:  # torch's load errors too
            log.error("cannot switch to the new default model %s (still serving %s; trying "
                      "again in %d s): %s", wanted, self._serving, RETRY_LOAD_SECONDS, error)
            self._failed = (wanted, time.monotonic())
            return
        with self._switching:
            log.info("now serving %s (was %s)", wanted, self._serving)
            self._serving = wanted

    def warm_up(self) -> None:
        """Load the model and open its vector indexes now, so the first request is not slow."""
        model = self.model
        self._open_model(model)

    def _open_model(self, model: str) -> None:
        """Load `model`'s encoder and open its vector spaces that hold vectors."""
        self._encoder(model)
        for modality in ("image", "text"):
            if self._vector_count(modality, model):
                self._space(model, modality)
            else:
                log.warning("no %s vectors for %s in %s yet", modality, model, self.engine.home)

    def start_watching(self) -> None:
        """Keep the folders of `settings.watch` indexed in a thread (`server.watching`), with
        this server's encoder; nothing to do without any."""
        if not self.settings.watch or self.watcher is not None:
            return
        self.watcher = ServeWatcher(self.engine, self._served, self.settings.watch,
                                    self.settings.watch_settings)
        self.watcher.start()

    def _served(self) -> tuple[str, Encoder]:
        """The model requests use now and its encoder (behind this server's gate)."""
        model = self.model
        return model, self._encoder(model)

    def close(self) -> None:
        """Stop the watcher's (after its round), the batcher's and the lanes' threads."""
        if self.watcher is not None:
            self.watcher.stop()
        self.batcher.close()
        self.lanes.close()
        with self._open:
            for encoder in self._gated:
                ungate_encoder(encoder, self.gate)
            self._gated.clear()

    # -- searches ----------------------------------------------------------------------

    def search(self, query: str, *, limit: int, offset: int, like: tuple[int, ...] = (),
               unlike: tuple[int, ...] = (), refine: Refinements = NONE) -> SearchResult:
        """As `Engine.search`, the sentence encoded in a batch with other requests'. Query
        arithmetic, or indexed photos as terms (`like`, `unlike`: catalog ids), go to the
        engine (`search_terms`). `refine`: the filters, threshold and order."""
        if like or unlike or has_arithmetic(query):
            return self.search_terms(query, limit=limit, offset=offset, like=like, unlike=unlike,
                                     refine=refine)
        query = check_query_text(query)
        model = self.model
        space = self._space(model, "image")
        vector = self.batcher.encode(model, query)  # (1, d)
        return image_result(self.engine.catalog, space, vector, query, k=limit, offset=offset,
                            **refine.as_kwargs())

    def search_terms(self, query: str, *, limit: int, offset: int, like: tuple[int, ...] = (),
                     unlike: tuple[int, ...] = (), refine: Refinements = NONE) -> SearchResult:
        """As `Engine.search` with query arithmetic: the phrases in one model call (behind the
        gate, as slow work) and the stored vectors of the `like` and `unlike` ids."""
        for media_id in (*like, *unlike):
            self.require_media(media_id)
        model = self._prepare("image")
        return self.engine.search(query, k=limit, model=model, offset=offset, like=list(like),
                                  unlike=list(unlike), **refine.as_kwargs())

    def search_upload(self, upload: Upload, *, limit: int, offset: int,
                      refine: Refinements = NONE) -> SearchResult:
        model = self._prepare("image")
        result = self.engine.similar(upload.image, k=limit, model=model, offset=offset,
                                     **refine.as_kwargs())
        return dataclasses.replace(result, query=upload.name)

    def similar(self, media_id: int, *, limit: int, offset: int,
                refine: Refinements = NONE) -> SearchResult:
        """As `Engine.similar` of an id: the stored vector, no model call."""
        self.require_media(media_id)
        space = self._space(self.model, "image")
        vector, label = stored_vector(self.engine.catalog, space.model, check_media_id(media_id))
        return image_result(self.engine.catalog, space, vector, label, k=limit, offset=offset,
                            **refine.as_kwargs())

    def lookup(self, image: ImageRef, *, limit: int, offset: int,
               text_set: str | None) -> SearchResult:
        if not self._vector_count("text"):
            raise NotIndexedError(
                f"no texts are indexed for model {self.model} in {self.engine.home}; run "
                f"`searchengine add-texts FILE.csv --model {self.model}` first")
        source, name = self._resolved(image)
        model = self._prepare("text", *_stored(source))
        result = self.engine.lookup(source, k=limit, text_set=text_set, model=model,
                                    offset=offset)
        return dataclasses.replace(result, query=name)

    # -- single answers ------------------------------------------------------------------

    def classify(self, image: ImageRef, labels: list[str], *, templates: str) -> Classification:
        source, name = self._resolved(image)
        model = self._prepare(*_stored(source))
        result = self.engine.classify(source, labels, templates=templates, model=model)
        return dataclasses.replace(result, image=name)

    def match(self, image: ImageRef, text: str) -> dict:
        """As `Engine.match`; for an indexed image, the text joins the batcher."""
        source, name = self._resolved(image)
        model = self._prepare(*_stored(source))
        if isinstance(source, int):
            text = check_query_text(text)
            space = self._space(model, "image")
            vector, _ = stored_vector(self.engine.catalog, space.model, check_media_id(source))
            score = float(self.batcher.encode(model, text)[0] @ vector[0])
        else:
            score = self.engine.match(source, text, model=model)
        return {"image": display_path(name), "text": text, "model": model,
                "score": round(score, 6)}

    def status(self) -> dict:
        report = self.engine.status()
        return {**report.as_dict(), "serving_model": self.model}

    def facets(self) -> dict:
        """`collection_facets`, computed again only when the catalog's photos changed (one
        grouped query tells: count, last id, last indexing time)."""
        key = media_fingerprint(self.engine.catalog)
        with self._facets_lock:
            if self._facets is None or self._facets[0] != key:
                self._facets = (key, collection_facets(self.engine.catalog).as_dict())
            return self._facets[1]

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

    def _space(self, model: str, modality: str) -> VectorSpace:
        """The space, its index loaded (read again when another process saved it)."""
        with self._open:
            space = self.engine.space(model, modality)
            space.index  # noqa: B018 (loads it now, under the lock, not in each search)
        return space

    def _encoder(self, model: str) -> Encoder:
        """The engine's encoder, its calls made slow work behind this server's gate."""
        with self._open:
            encoder = self.engine.encoder(model)
            if getattr(encoder.encode_texts, "gate", None) is not self.gate:
                gate_encoder(encoder, self.gate, text_chunk=self.settings.slow_text_chunk)
                self._gated.append(encoder)
            return encoder

    def _encode_texts(self, model: str, texts: list[str]):
        """(n, d) float32 unit vectors of `texts`: the batcher's model call, urgent."""
        encode = ungated_texts(self._encoder(model))
        with self.gate.turn(urgent=True):
            return encode(texts)

    def _prepare(self, *modalities: str) -> str:
        """The model id, with its encoder and the spaces of `modalities` opened under the lock,
        so that the engine call that follows finds them open and only reads."""
        model = self.model
        self._encoder(model)
        for modality in modalities:
            self._space(model, modality)
        return model

    def require_media(self, media_id: int):
        row = self.engine.catalog.media([media_id]).get(media_id)
        if row is None:
            raise ApiError(404, f"no catalogued image with id {media_id}")
        return row

    def _vector_count(self, modality: str, model: str | None = None) -> int:
        row = self.engine.catalog.find_model(model or self.model)
        return self.engine.catalog.count_vectors(modality, row.id) if row else 0

    def _resolved(self, image: ImageRef) -> tuple[int | Image.Image, str]:
        """(what the engine takes, a label): an id and its path, or an upload's decoded image
        (decoded once, in `read_upload`) and its display name."""
        if isinstance(image, Upload):
            return image.image, image.name
        row = self.require_media(image)
        return image, row.path


def _stored(source: int | Image.Image) -> tuple[str, ...]:
    """The spaces an image query reads: the image space for an indexed image's stored vector."""
    return ("image",) if isinstance(source, int) else ()
