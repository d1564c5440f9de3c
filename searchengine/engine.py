"""The Engine: a home folder (catalog + vector indexes) and the operations users run on it.

    engine = Engine.open("indexes")
    engine.index(["~/Pictures"])
    result = engine.search("a dog on the beach", k=10)

Every CLI command is one method here; the CLI only formats what comes back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from searchengine import ingest
from searchengine.catalog import Catalog
from searchengine.catalog.store import ModelRow
from searchengine.encoder import Encoder
from searchengine.errors import InvalidInputError, NotIndexedError
from searchengine.images import load_image
from searchengine.models import parse_model_spec
from searchengine.results import (
    AddTextsReport,
    CheckReport,
    Classification,
    LabelScore,
    SearchHit,
    SearchResult,
    SpaceStatus,
    Status,
)
from searchengine.settings import (
    DECODE_PRIORITIES,
    DEFAULT_MODEL,
    EncoderSettings,
    IngestSettings,
)
from searchengine.spaces import VectorSpace
from searchengine.texts import read_texts
from searchengine.vectors import check_kind, remove_stale_temps

log = logging.getLogger(__name__)
DEFAULT_MODEL_KEY = "default_model"


@dataclass
class Engine:
    """A home opened for work. Loaded models and indexes are cached for the engine's life."""

    home: Path
    catalog: Catalog
    encoder_settings: EncoderSettings = EncoderSettings()
    _encoders: dict[str, Encoder] = field(default_factory=dict)
    _spaces: dict[tuple[str, str], VectorSpace] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        home: str | Path,
        *,
        catalog_url: str | None = None,
        encoder_settings: EncoderSettings = EncoderSettings(),
    ) -> Engine:
        """Open (creating if needed) the home folder; the catalog is upgraded to the newest
        schema."""
        home = Path(home).expanduser()
        if home.exists() and not home.is_dir():
            raise InvalidInputError(f"home {home} is a file; give a folder")
        catalog = Catalog(catalog_url) if catalog_url else Catalog.in_home(home)
        return cls(home=home, catalog=catalog, encoder_settings=encoder_settings)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models and spaces ----------------------------------------------------------------

    def default_model(self) -> str:
        """`use-model`'s choice, else the first model this home indexed, else DEFAULT_MODEL."""
        return self.catalog.get_setting(DEFAULT_MODEL_KEY) or DEFAULT_MODEL

    def model_id_of(self, model: str | None) -> str:
        """The canonical id of a `--model` value (or the default), validated, nothing loaded."""
        return parse_model_spec(model or self.default_model()).id

    def encoder(self, model: str | None = None) -> Encoder:
        """The loaded encoder for `model` (default model when None), cached."""
        spec = parse_model_spec(model or self.default_model())
        if spec.id not in self._encoders:
            self._encoders[spec.id] = Encoder(spec, self.encoder_settings)
        return self._encoders[spec.id]

    def space(
        self, model: str | None, modality: str, *, create: bool = False, kind: str | None = None
    ) -> VectorSpace:
        """The vector space of (model, modality); getting and searching it never writes.

        Writers pass `create=True`: a missing model is added to the catalog and the space's index
        kind recorded (`kind`, else the stored one); they call `VectorSpace.maintain` before their
        first change. Without `create`, a missing space is an error. A cached space whose file
        another process saved since (`index`, `remove`, `use-model` while `serve` runs) is read
        again: one stat of its manifest per call.
        """
        spec_id = self.model_id_of(model)
        key = (spec_id, modality)
        cached = self._spaces.get(key)
        if cached is not None and (kind is None or cached.kind == kind):
            if not cached.changed_on_disk():
                return cached
            log.info("%s changed on disk; reading it again", cached.path.name)
        kind = check_kind(kind or self._stored_kind(spec_id, modality))  # before writing anything
        row = self.catalog.find_model(spec_id)
        if row is None:
            if not create:
                raise NotIndexedError(self._not_indexed_message(spec_id, modality))
            row = self.catalog.ensure_model(spec_id, self.encoder(model).dim)
        if create and self.catalog.get_setting(_kind_key(spec_id, modality)) != kind:
            self.catalog.set_setting(_kind_key(spec_id, modality), kind)
        space = VectorSpace(self.catalog, self.home, row, modality, kind)
        self._spaces[key] = space
        return space

    def _resync_spaces(self) -> None:
        """A writer's first step: bring back in step every index file whose manifest disagrees
        with the catalog (count, id sum, kind), as a crash between a catalog commit and an index
        save leaves it, and remove temporary files crashed saves left. Reads each manifest and
        one aggregate query per space; loads only the indexes out of step."""
        remove_stale_temps(self.home / "vectors")
        for row in self.catalog.models():
            for modality in ("image", "text"):
                if self.catalog.get_setting(_kind_key(row.spec, modality)) is None:
                    continue
                space = VectorSpace(
                    self.catalog, self.home, row, modality, self._stored_kind(row.spec, modality)
                )
                if not space.in_step():
                    # read from the file, not a cached copy the catalog may have moved past
                    log.info("%s is out of step with the catalog; re-syncing", space.path.name)
                    space.save()  # synced (or rebuilt) in memory first
                    self._spaces[(row.spec, modality)] = space

    def _stored_kind(self, spec_id: str, modality: str) -> str:
        return self.catalog.get_setting(_kind_key(spec_id, modality)) or "flat"

    def _not_indexed_message(self, spec_id: str, modality: str) -> str:
        if modality == "image":
            return (
                f"no image index for model {spec_id} in {self.home}; run "
                f"`searchengine index FOLDER --model {spec_id} --home {self.home}` first"
            )
        return (
            f"no text index for model {spec_id} in {self.home}; run "
            f"`searchengine add-texts FILE.csv --model {spec_id} --home {self.home}` first"
        )

    # -- writing --------------------------------------------------------------------------

    def index(
        self,
        paths: list[str | Path],
        *,
        model: str | None = None,
        settings: IngestSettings = IngestSettings(),
        index_kind: str | None = None,
        progress: bool = False,
    ) -> ingest.IngestReport:
        """Embed every image file under `paths` that is new or changed; forget vanished ones."""
        start = time.perf_counter()
        roots = ingest.check_roots([Path(p) for p in paths])
        if settings.batch_size < 1 or settings.workers < 0:
            raise InvalidInputError("batch size must be >= 1 and workers >= 0")
        if settings.decode_priority not in DECODE_PRIORITIES:
            raise InvalidInputError(
                f"unknown decode priority {settings.decode_priority!r}; "
                f"use one of {', '.join(DECODE_PRIORITIES)}"
            )
        self._resync_spaces()
        space = self.space(model, "image", create=True, kind=index_kind)
        space.maintain()
        if self.catalog.get_setting(DEFAULT_MODEL_KEY) is None:
            self.catalog.set_setting(DEFAULT_MODEL_KEY, space.model.spec)  # the first model indexed
        work, scanned = ingest.plan(self.catalog, space.model.id, roots, settings)
        log.info(
            "%d files found, %d to embed, %d gone", scanned, len(work.to_embed), len(work.vanished)
        )
        space.begin_writes()  # until the last save: a kill in between is seen by the next run
        try:
            result, removed = self._apply(space, work, model, settings, progress)
        finally:
            space.end_writes()
        # files that changed content or turned bad lost the vectors of every model in the
        # catalog (re-made when those models index again): drop them from the other index files
        self._resync_spaces()
        return ingest.IngestReport(
            scanned=scanned,
            unchanged=work.unchanged,
            embedded=result.embedded,
            reused=result.reused,
            skipped=result.skipped + len(work.unreadable),
            removed=removed,
            seconds=time.perf_counter() - start,
        )

    def _apply(
        self,
        space: VectorSpace,
        work: ingest.Plan,
        model: str | None,
        settings: IngestSettings,
        progress: bool,
    ) -> tuple[ingest.BatchResult, int]:
        """Carry out an index plan on `space`; returns what was embedded and how many removed."""
        result = ingest.BatchResult(0, 0, 0)
        if work.to_embed:
            encoder = self.encoder(model)
            result = ingest.embed_files(
                self.catalog, encoder, space, work.to_embed, settings, progress=progress
            )
        removed = self._forget(work.vanished) if work.vanished else 0
        space.retrain_if_needed()
        if work.unreadable:
            written = self.catalog.write_images(
                space.model.id, [], np.zeros((0, space.model.dim)), work.unreadable
            )
            space.remove(written.removed)
        space.maintain()
        return result, removed

    def remove(self, paths: list[str | Path]) -> int:
        """Forget files and folders (catalog rows, vectors of every model). Returns files forgotten.

        Nothing on disk is touched. Paths need not exist any more.
        """
        if not paths:
            raise InvalidInputError("give at least one file or folder to forget")
        self._resync_spaces()  # also what a crashed `remove` left behind
        roots = [_absolute(p) for p in paths]
        stored = list(self.catalog.files_under(roots)) + list(self.catalog.skipped_under(roots))
        if not stored:
            raise InvalidInputError(f"nothing catalogued under {', '.join(roots)}")
        return self._forget(stored)

    def _forget(self, paths: list[str]) -> int:
        removed = self.catalog.remove_files(paths)
        for row in self.catalog.models():
            if self.catalog.get_setting(_kind_key(row.spec, "image")) is None:
                continue
            space = self.space(row.spec, "image")
            space.remove(removed)
            space.save()
        return len(removed)

    def add_texts(
        self,
        source: str | Path,
        *,
        column: str = "caption",
        text_set: str = "default",
        model: str | None = None,
        batch_size: int = 64,
    ) -> AddTextsReport:
        """Add the texts of a CSV/TSV column, Parquet column or plain text file to a named set and
        embed every text that lacks a vector of `model`."""
        if not text_set.strip():
            raise InvalidInputError("the text set needs a name (--set)")
        texts = read_texts(Path(source), column=column)
        added = self.catalog.add_texts(text_set, texts)
        embedded = self.embed_texts(model, batch_size=batch_size)
        return AddTextsReport(text_set, len(texts), added, embedded, self.model_id_of(model))

    def embed_texts(self, model: str | None = None, *, batch_size: int = 64) -> int:
        """Embed all catalogued texts that have no vector of `model` yet; returns how many."""
        self._resync_spaces()
        space = self.space(model, "text", create=True)
        space.maintain()
        pending = self.catalog.texts_without_vector(space.model.id)
        if not pending:
            return 0
        encoder = self.encoder(model)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            ids = np.array([i for i, _ in chunk], dtype=np.int64)
            vectors = encoder.encode_texts([t for _, t in chunk])  # (b, d) float32 unit
            self.catalog.write_text_vectors(space.model.id, ids, vectors)
            space.add(ids, vectors)
        space.retrain_if_needed()
        space.save()
        return len(pending)

    def use_model(self, model: str, *, force: bool = False) -> str:
        """Make `model` the home's default. Refused while its image space is incomplete (the old
        one keeps serving) unless `force`."""
        spec_id = self.model_id_of(model)
        self._resync_spaces()
        row = self.catalog.find_model(spec_id)
        images = self.catalog.count_media()
        have = self.catalog.count_vectors("image", row.id) if row else 0
        if have < images and not force:
            raise NotIndexedError(
                f"model {spec_id} has vectors for {have} of {images} images; finish "
                f"`searchengine index FOLDER --model {spec_id}` first (or pass --force)"
            )
        self.catalog.set_setting(DEFAULT_MODEL_KEY, spec_id)
        return spec_id

    # -- queries --------------------------------------------------------------------------

    def search(
        self, query: str, *, k: int = 10, model: str | None = None, offset: int = 0
    ) -> SearchResult:
        """Text -> image: the `k` images closest to the sentence, best first (from `offset`)."""
        query = _check_query(query)
        space = self.space(model, "image")
        vector = self.encoder(model).encode_texts([query])  # (1, d)
        return SearchResult(query, space.model.spec, self._image_hits(space, vector, k, offset))

    def similar(
        self, image: str | Path | int, *, k: int = 10, model: str | None = None, offset: int = 0
    ) -> SearchResult:
        """Image -> image: `image` is a path (catalogued or not) or a catalog id."""
        space = self.space(model, "image")
        vector, label = self.image_vector(image, model=model)
        return SearchResult(label, space.model.spec, self._image_hits(space, vector, k, offset))

    def lookup(
        self,
        image: str | Path | int,
        *,
        k: int = 5,
        text_set: str | None = None,
        model: str | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """Image -> text: the `k` texts (of one set, or all) that best describe the image."""
        space = self.space(model, "text")
        allowed = None
        if text_set is not None:
            ids = self.catalog.text_ids(text_set)
            if not ids:
                sets = ", ".join(self.catalog.text_sets()) or "none yet"
                raise InvalidInputError(f"no text set named {text_set!r}; sets: {sets}")
            allowed = np.fromiter(ids.values(), dtype=np.int64)
        vector, label = self.image_vector(image, model=model)
        D, I = space.index.search(vector, k + offset, allowed_ids=allowed)
        texts = self.catalog.texts(int(i) for i in I[0] if i >= 0)
        hits = [
            SearchHit(rank, float(score), int(i), text=texts[int(i)].text)
            for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
            if i >= 0 and int(i) in texts
        ]
        return SearchResult(label, space.model.spec, _rerank(hits[offset:], start=offset + 1))

    def classify(
        self,
        image: str | Path | int,
        labels: list[str],
        *,
        templates: str = "ensemble",
        model: str | None = None,
    ) -> Classification:
        """Zero-shot: probability of each label (softmax over scaled cosines), best first."""
        from searchengine.prompts import label_embeddings, templates_named

        labels = [label.strip() for label in labels if label.strip()]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise InvalidInputError("give at least two distinct labels, e.g. --labels 'dog,cat'")
        encoder = self.encoder(model)
        vector, label = self.image_vector(image, model=model)
        label_vectors = label_embeddings(encoder, labels, templates_named(templates))  # (L, d)
        logits = (label_vectors @ vector[0]) * self._logit_scale(encoder)  # (L,)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        scores = [LabelScore(labels[i], float(probabilities[i])) for i in order]
        return Classification(label, encoder.spec.id, scores)

    def match(self, image: str | Path | int, text: str, *, model: str | None = None) -> float:
        """Image-text consistency: the cosine between the image and the text, in [-1, 1]."""
        text = _check_query(text)
        vector, _ = self.image_vector(image, model=model)
        return float(self.encoder(model).encode_texts([text])[0] @ vector[0])

    def image_vector(
        self, image: str | Path | int, *, model: str | None = None
    ) -> tuple[np.ndarray, str]:
        """(1, d) float32 unit vector of an image, and a label for it (its path).

        A catalogued image uses its stored vector when the model has one; anything else is
        decoded and embedded now.
        """
        if isinstance(image, int) or (
            isinstance(image, str) and image.isdigit() and not Path(image).exists()
        ):
            return self._stored_image_vector(int(image), model)
        path = Path(image).expanduser()
        if not path.exists():
            raise InvalidInputError(f"{image} does not exist; give an image file or a catalog id")
        if not path.is_file():
            raise InvalidInputError(f"{image} is not a file")
        row = self.catalog.media_by_path(_absolute(path))
        if row is not None:
            model_row = self.catalog.find_model(self.model_id_of(model))
            stat = path.stat()
            if model_row and (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                ids, vectors = self.catalog.vectors("image", model_row.id, ids=[row.id])
                if len(ids):
                    return vectors, str(path)
        return self._embed_file(path, model), str(path)

    def _stored_image_vector(self, media_id: int, model: str | None) -> tuple[np.ndarray, str]:
        space = self.space(model, "image")
        ids, vectors = self.catalog.vectors("image", space.model.id, ids=[media_id])
        media = self.catalog.media([media_id])
        if not len(ids) or media_id not in media:
            raise InvalidInputError(
                f"no indexed image with id {media_id} for model {space.model.spec}"
            )
        return vectors, media[media_id].path

    def _embed_file(self, path: Path, model: str | None) -> np.ndarray:
        from searchengine.errors import ImageDecodeError

        encoder = self.encoder(model)
        try:
            image, _ = load_image(path)
        except ImageDecodeError as error:
            raise InvalidInputError(f"{path}: {error}") from error
        return encoder.encode_images(encoder.preprocess(image).unsqueeze(0))

    def embed_image(self, image, model: str | None = None) -> np.ndarray:
        """(1, d) float32 unit vector of a PIL image (uploads, tests)."""
        encoder = self.encoder(model)
        return encoder.encode_images(encoder.preprocess(image.convert("RGB")).unsqueeze(0))

    def search_by_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        model: str | None = None,
        offset: int = 0,
        label: str = "",
    ) -> SearchResult:
        """Images closest to a (1, d) float32 unit vector."""
        space = self.space(model, "image")
        return SearchResult(label, space.model.spec, self._image_hits(space, vector, k, offset))

    def _image_hits(
        self, space: VectorSpace, vector: np.ndarray, k: int, offset: int
    ) -> list[SearchHit]:
        if k < 1 or offset < 0:
            raise InvalidInputError("k must be >= 1 and offset >= 0")
        D, I = space.index.search(vector, k + offset)
        media = self.catalog.media(int(i) for i in I[0] if i >= 0)
        hits = [
            SearchHit(rank, float(score), int(i), path=media[int(i)].path)
            for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
            if i >= 0 and int(i) in media
        ]
        return _rerank(hits[offset:], start=offset + 1)

    @staticmethod
    def _logit_scale(encoder: Encoder) -> float:
        scale = getattr(encoder.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    # -- vectors for benchmarks -----------------------------------------------------------

    def vectors(
        self, modality: str, *, model: str | None = None, ids: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Durable vectors from the catalog: (n,) int64 ids and (n, d) float32 unit rows."""
        space = self.space(model, modality)
        return self.catalog.vectors(modality, space.model.id, ids=ids)

    def search_vectors(
        self,
        modality: str,
        queries: np.ndarray,
        *,
        k: int,
        model: str | None = None,
        text_set: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k through the space's own FAISS index: (m, k) float32 scores, (m, k) int64 ids."""
        space = self.space(model, modality)
        allowed = None
        if text_set is not None and modality == "text":
            allowed = np.fromiter(self.catalog.text_ids(text_set).values(), dtype=np.int64)
        return space.index.search(queries, k, allowed_ids=allowed)

    def media_ids_by_path(self, paths: list[str | Path]) -> dict[str, int]:
        """Absolute path string -> media id, for catalogued paths among `paths`."""
        wanted = [_absolute(p) for p in paths]
        stored = self.catalog.files_under(sorted({str(Path(p).parent) for p in wanted}))
        return {p: stored[p].id for p in wanted if p in stored}

    def text_ids(self, text_set: str | None = None) -> dict[str, int]:
        return self.catalog.text_ids(text_set)

    # -- state ----------------------------------------------------------------------------

    def status(self) -> Status:
        spaces = []
        for row in self.catalog.models():
            for modality in ("image", "text"):
                count = self.catalog.count_vectors(modality, row.id)
                if count or self.catalog.get_setting(_kind_key(row.spec, modality)):
                    spaces.append(
                        SpaceStatus(
                            row.spec, modality, count, self._stored_kind(row.spec, modality)
                        )
                    )
        return Status(
            home=str(self.home),
            images=self.catalog.count_media(),
            default_model=self.default_model(),
            spaces=spaces,
            text_sets=self.catalog.text_sets(),
            skipped=[(s.path, s.reason) for s in self.catalog.skipped()],
        )

    def check(self, *, repair: bool = False) -> CheckReport:
        """Does every index file agree with the catalog? With `repair`, rebuild those that don't
        (and remove temporary files crashed saves left)."""
        if repair:
            remove_stale_temps(self.home / "vectors")
        checks = []
        for row in self.catalog.models():
            for modality in ("image", "text"):
                if self.catalog.get_setting(_kind_key(row.spec, modality)) is None:
                    continue
                space = VectorSpace(
                    self.catalog, self.home, row, modality, self._stored_kind(row.spec, modality)
                )
                result = space.check()
                if repair and not result.ok:
                    space.repair()
                    self._spaces.pop((row.spec, modality), None)
                    result = space.check()
                checks.append(result)
        return CheckReport(checks, repaired=repair)

    def models(self) -> list[ModelRow]:
        return self.catalog.models()


def _absolute(path: str | Path) -> str:
    """The path as the catalog stores it: absolute and normalised (`a/../b` is `b`), links kept,
    exactly as `ingest.check_roots` makes the roots it walks."""
    return os.path.abspath(os.path.expanduser(path))


def _kind_key(spec_id: str, modality: str) -> str:
    return f"index_kind:{modality}:{spec_id}"


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("empty query: give a sentence to search for")
    return query.strip()


def _rerank(hits: list[SearchHit], start: int = 1) -> list[SearchHit]:
    return [
        SearchHit(rank, h.score, h.id, h.path, h.text) for rank, h in enumerate(hits, start=start)
    ]


__all__ = [
    "AddTextsReport",
    "CheckReport",
    "Classification",
    "Engine",
    "LabelScore",
    "SearchHit",
    "SearchResult",
    "SpaceStatus",
    "Status",
]
