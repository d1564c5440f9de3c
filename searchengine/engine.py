"""The Engine: a home folder (catalog + vector indexes) and the operations users run on it.

    engine = Engine.open("indexes")
    engine.index(["~/Pictures"])
    result = engine.search("a dog on the beach", k=10)

Every CLI command is one method here; the CLI only formats what comes back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np

from searchengine.catalog import Catalog, as_stored
from searchengine.catalog.records import ModelRow
from searchengine.clipformat.reader import ImportReport
from searchengine.clipformat.writer import DEFAULT_SHARD_SIZE, ExportReport
from searchengine.encoder import Encoder
from searchengine.errors import (
    IndexMismatchError,
    InvalidInputError,
    NotIndexedError,
    SearchEngineError,
)
from searchengine.home import Home
from searchengine.index.guard_queries import guard_sentences
from searchengine.index.kinds import IndexSettings
from searchengine.index.registry import HomeSpaces
from searchengine.index.removal import RemovedModel
from searchengine.index.search import search_space
from searchengine.index.spaces import VectorSpace, index_path
from searchengine.index.tuning import QUERIES as GUARD_QUERIES
from searchengine.index.vectors import check_kind, read_manifest
from searchengine.ingest.cluster import connect, embed_files_on_ray, require_ray
from searchengine.ingest.collection import CollectionReport, SwitchReport
from searchengine.ingest.commit import BatchResult, IngestReport, embed_files
from searchengine.ingest.metadata import refresh_metadata
from searchengine.ingest.scan import Plan, check_roots, plan
from searchengine.models import (
    ensure_weights_available,
    parse_model_spec,
)
from searchengine.onnx_text import OnnxTextEncoder, export_folder, ready
from searchengine.onnx_text import export as export_onnx_text
from searchengine.paths import catalog_path
from searchengine.query.arithmetic import check_weights, combine, parse_query
from searchengine.query.duplicates import (
    DEFAULT_THRESHOLD,
    DuplicateReport,
    check_threshold,
    duplicate_groups,
)
from searchengine.query.filters import SearchFilter
from searchengine.query.hits import (
    check_query_text,
    check_refinements,
    image_hits,
    image_result,
    text_hits,
)
from searchengine.query.images import embed_pil, stored_vector, unchanged_file_vector
from searchengine.query.inputs import (
    ImageQuery,
    check_media_id,
    check_query_path,
    decode_query_image,
    unit_query_vector,
)
from searchengine.query.results import (
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
    BENCH_TEXT_SET_PREFIX,
    DECODE_PRIORITIES,
    DEFAULT_MODEL,
    EncoderSettings,
    IngestSettings,
    RaySettings,
)
from searchengine.texts import clean_texts, read_texts

log = logging.getLogger(__name__)
DEFAULT_MODEL_KEY = "default_model"
TUNED_MODELS = "models"  # the home's folder of checkpoints `tune` trained (HOME/models/*.pt)
MAX_LABELS = 1_000  # classify: each label costs one text encoding per prompt template


def _image_terms(images: Sequence[ImageQuery] | ImageQuery | None) -> list[ImageQuery]:
    """`like` / `unlike` as a list: None is none, one image (a path, an id, ...) a list of one."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [cast(ImageQuery, images)]  # a str or bytes is one image, not a sequence of them


def _writes(command: str, *, only_if: str | None = None) -> Callable:
    """The decorated Engine method runs holding the home's writer lock (`Home.writing`);
    with `only_if`, only when that keyword argument is true (`check(repair=True)`). Spaces cached
    before the lock was taken are dropped: another process may have written since, and a stale
    in-memory index saved over its work would lose its vectors."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: Engine, *args, **kwargs):
            if only_if is not None and not kwargs.get(only_if):
                return method(self, *args, **kwargs)
            with self.state.writing(command) as took_lock:
                if took_lock:
                    self._spaces.clear()
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


@dataclass
class Engine:
    """A home opened for work. Loaded models and indexes are cached for the engine's life."""

    state: Home
    encoder_settings: EncoderSettings = EncoderSettings()
    _encoders: dict[str, Encoder] = field(default_factory=dict)
    _onnx_text: dict[str, OnnxTextEncoder | None] = field(default_factory=dict)
    _spaces: HomeSpaces = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._spaces = HomeSpaces(self.state.catalog, self.state.path)

    @classmethod
    def open(
        cls,
        home: str | Path,
        *,
        create: bool = True,
        catalog_url: str | None = None,
        encoder_settings: EncoderSettings = EncoderSettings(),
        lock_timeout: float = 0.0,
    ) -> Engine:
        """Open the home folder; the catalog is upgraded to the newest schema.

        `create`: make the home when it has no catalog yet (the default: a home is built through
        this API). What this call made is removed again on `close` while it holds nothing (the
        first write failed before storing anything). Readers pass `create=False`: a missing home
        is then a NotIndexedError and nothing is made.
        `lock_timeout`: seconds a write (index, remove, add_texts, use_model, check with repair)
        waits while another process writes to this home; 0 fails at once with HomeBusyError.
        `catalog_url`: the catalog in a database instead of the home's SQLite file, e.g.
        `postgresql+psycopg://user@host/db` (needs the `postgres` extra); the index files stay
        in `home`, which then serves that catalog alone (see docs/postgresql.md).
        """
        state = Home.open(home, create=create, catalog_url=catalog_url, lock_timeout=lock_timeout)
        return cls(state=state, encoder_settings=encoder_settings)

    @property
    def home(self) -> Path:
        return self.state.path

    @property
    def catalog(self) -> Catalog:
        return self.state.catalog

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models and spaces ----------------------------------------------------------------

    def default_model(self) -> str:
        """`use-model`'s choice, else the first model this home indexed, else DEFAULT_MODEL."""
        return self.catalog.get_setting(DEFAULT_MODEL_KEY) or DEFAULT_MODEL

    def model_id_of(self, model: str | None) -> str:
        """The canonical id of a `--model` value (or the default), validated, nothing loaded.

        A checkpoint is its content: the readable `ARCH/path` names the first content this home
        indexed from that path; other weights later written there are `ARCH/path#<digest>`, a
        space of their own (the user is warned once), so two sets of weights never share one.
        """
        return self._spaces.key_of(parse_model_spec(model or self.default_model()))

    def encoder(self, model: str | None = None) -> Encoder:
        """The loaded encoder for `model` (default model when None), cached by content."""
        spec = parse_model_spec(model or self.default_model())
        if spec.key not in self._encoders:
            self._encoders[spec.key] = Encoder(spec, self.encoder_settings)
        return self._encoders[spec.key]

    def text_encoder(self, model: str | None = None) -> Encoder | OnnxTextEncoder:
        """What encodes text queries for `model`: its loaded Encoder, else (with
        `EncoderSettings.onnx_text`) the ONNX export of its text tower when one is ready, else
        the Encoder, loaded now."""
        spec = parse_model_spec(model or self.default_model())
        if spec.key in self._encoders or not self.encoder_settings.onnx_text:
            return self.encoder(model)
        if spec.key not in self._onnx_text:
            self._onnx_text[spec.key] = OnnxTextEncoder.open(export_folder(spec), spec)
        return self._onnx_text[spec.key] or self.encoder(model)

    def has_encoder(self, model: str | None = None) -> bool:
        """True when this engine has loaded `model` (the default when None)."""
        return parse_model_spec(model or self.default_model()).key in self._encoders

    def onnx_text_missing(self, model: str | None = None) -> bool:
        """True when `model` can have an ONNX export (`onnx_text`) but has no usable one: none
        is ready, or the one there does not open."""
        spec = parse_model_spec(model or self.default_model())
        folder = export_folder(spec)
        if folder is None:
            return False
        if not ready(folder):
            return True
        if spec.key not in self._onnx_text:  # not tried yet: open it (a third of a second)
            self._onnx_text[spec.key] = OnnxTextEncoder.open(folder, spec)
        return self._onnx_text[spec.key] is None

    def prepare_onnx_text(self, model: str | None = None, *, loaded_only: bool = False
                          ) -> Path | None:
        """Export `model`'s text tower to ONNX for later processes' text queries (see
        `onnx_text`) unless a usable export is there (one this engine found damaged is
        replaced); the folder, or None for a model that has none (random weights, another kind
        of text tower). `loaded_only`: only when this engine has the model loaded already
        (never load it for this). A few seconds and the text tower's size on disk (254 MB for
        ViT-B-32), once per model content, in the user's cache."""
        spec = parse_model_spec(model or self.default_model())
        folder = export_folder(spec)
        if folder is None or not self.onnx_text_missing(model):
            return folder
        if loaded_only and not self.has_encoder(model):
            return None
        made = export_onnx_text(self.encoder(model), replace=ready(folder))
        self._onnx_text.pop(spec.key, None)
        return made

    def use_encoder(self, encoder: Encoder) -> None:
        """Embed with `encoder`, loaded elsewhere, for its model (a server's, behind its gate):
        this engine then never loads a second copy of the same weights."""
        self._encoders[encoder.spec.key] = encoder

    def space(
        self,
        model: str | None,
        modality: str,
        *,
        create: bool = False,
        kind: str | None = None,
        settings: IndexSettings | None = None,
    ) -> VectorSpace:
        """The vector space of (model, modality); getting and searching it never writes.

        Writers pass `create=True`: a missing model is added to the catalog and the space's index
        kind recorded (`kind`, else the stored one; auto for a new space) with its `settings`
        (else the stored ones); they call `VectorSpace.maintain` before their
        first change. Without `create`, a missing space is an error. A cached space whose file
        another process saved since (`index`, `remove`, `use-model` while `serve` runs) is read
        again: one stat of its manifest per call.
        """
        spec = parse_model_spec(model or self.default_model())
        spec_id = self._spaces.key_of(spec)
        cached = self._spaces.cached(spec_id, modality, kind, settings)
        if cached is not None:
            return self._guarded(cached, model, create)
        if kind is None and create and not self._spaces.recorded(spec_id, modality):
            kind = "auto"  # a new space; one written before kinds were recorded reads as flat
        kind = check_kind(kind or self._spaces.stored_kind(spec_id, modality))  # before writing
        row = self.catalog.find_model(spec_id)
        if row is None:
            if not create:
                raise NotIndexedError(self._not_indexed_message(spec_id, modality))
            row = self.catalog.ensure_model(spec_id, self.encoder(model).dim, spec.digest)
        elif create and spec.digest and row.content_hash is None:  # a row from before 0002
            row = self.catalog.ensure_model(spec_id, row.dim, spec.digest)
        return self._guarded(self._spaces.open(row, modality, kind, record=create,
                                               settings=settings), model, create)

    def _guarded(self, space: VectorSpace, model: str | None, create: bool) -> VectorSpace:
        """`space`; for a writer (`create`), its recall guard, in a home of photos alone,
        searches with sentences encoded by the model (`VectorSpace.guard_texts`). A reader that
        rebuilds an index in memory (it never saves it) tunes on photo queries alone rather than
        run the model there: `serve` would do it under its engine lock, behind its model gate."""
        if create and space.modality == "image":
            space.guard_texts = functools.partial(self._guard_vectors, model)
        return space

    def _guard_vectors(self, model: str | None) -> np.ndarray | None:
        """(c, d) float32: `guard_queries.guard_sentences` encoded by `model`; None (logged)
        when the model cannot be loaded here, which leaves the guard to photo queries."""
        try:
            return self.text_encoder(model).encode_texts(guard_sentences(GUARD_QUERIES))
        except (SearchEngineError, OSError, RuntimeError) as error:
            log.warning("the recall guard tunes on photo queries alone: no sentences could be "
                        "encoded (%s)", error)
            return None

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

    @_writes("index")
    def index(
        self,
        paths: list[str | Path],
        *,
        model: str | None = None,
        settings: IngestSettings = IngestSettings(),
        index_kind: str | None = None,
        target_recall: float | None = None,
        index_memory: str | int | None = None,
        flat_limit: int | None = None,
        ray: RaySettings | None = None,
        progress: bool = False,
    ) -> IngestReport:
        """Embed every image file under `paths` that is new or changed; forget vanished ones.

        `index_kind`: flat, hnsw, ivf, ivf-sq8, ivf-pq or auto (a new space's default: exact
        up to `flat_limit` vectors, IVF above). An approximate index's search parameters are
        tuned to reach `target_recall` (recall@10, default 0.95) within `index_memory` (bytes,
        or a size such as "2GB"). Kind and settings are recorded and kept by later runs.
        `ray`: decode and embed on a Ray cluster (`ingest.cluster`), this process planning and
        committing as it does locally; Ray is joined only when there is something to embed.
        """
        start = time.perf_counter()
        if ray is not None:
            require_ray(ray)  # before anything is touched
        roots = check_roots([Path(p) for p in paths])
        if settings.batch_size < 1 or settings.workers < 0:
            raise InvalidInputError("batch size must be >= 1 and workers >= 0")
        if settings.decode_priority not in DECODE_PRIORITIES:
            raise InvalidInputError(
                f"unknown decode priority {settings.decode_priority!r}; "
                f"use one of {', '.join(DECODE_PRIORITIES)}"
            )
        if index_kind is not None:
            check_kind(index_kind)
        index_settings = self._spaces.stored_settings(self.model_id_of(model), "image").updated(
            target_recall=target_recall, memory=index_memory, flat_limit=flat_limit
        )
        ensure_weights_available(model or self.default_model())  # offline: fail in a second
        self._spaces.resync()
        space = self.space(
            model, "image", create=True, kind=index_kind, settings=index_settings
        )
        space.plans(self.catalog.count_vectors("image", space.model.id))  # fits the budget?
        space.maintain()
        if self.catalog.get_setting(DEFAULT_MODEL_KEY) is None:
            self.catalog.set_setting(DEFAULT_MODEL_KEY, space.model.spec)  # the first model indexed
        work, scanned = plan(self.catalog, space.model.id, roots, settings)
        log.info(
            "%d files found, %d to embed, %d gone", scanned, len(work.to_embed), len(work.vanished)
        )
        if scanned == 0:
            log.warning(
                "no image files under %s: an image is a file named *%s (any case); hidden files "
                "and folders (names starting with '.') are skipped%s",
                ", ".join(map(str, roots)),
                ", *".join(settings.extensions),
                "" if settings.follow_symlinks else ", links to folders are not followed",
            )
        cluster = connect(ray) if ray is not None and work.to_embed else None
        space.begin_writes()  # until the last save: a kill in between is seen by the next run
        try:
            result, removed = self._apply(space, work, model, settings, progress, ray=ray)
            refreshed = refresh_metadata(self.catalog, work.refresh, settings, progress=progress)
        finally:
            space.end_writes()
            if cluster is not None:
                cluster.close()
        # files that changed content or turned bad lost the vectors of every model in the
        # catalog (re-made when those models index again): drop them from the other index files
        self._spaces.resync()
        return IngestReport(
            scanned=scanned,
            unchanged=work.unchanged,
            embedded=result.embedded,
            reused=result.reused,
            skipped=result.skipped + len(work.unreadable),
            removed=removed,
            seconds=time.perf_counter() - start,
            refreshed=refreshed,
        )

    def _apply(
        self,
        space: VectorSpace,
        work: Plan,
        model: str | None,
        settings: IngestSettings,
        progress: bool,
        *,
        ray: RaySettings | None = None,
    ) -> tuple[BatchResult, int]:
        """Carry out an index plan on `space`; returns what was embedded and how many removed."""
        result = BatchResult(0, 0, 0)
        if work.to_embed and ray is not None:
            result = embed_files_on_ray(
                self.catalog, self.encoder(model), space, work.to_embed, settings,
                ray_settings=ray, encoder_settings=self.encoder_settings, progress=progress,
            )
        elif work.to_embed:
            encoder = self.encoder(model)
            result = embed_files(
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

    @_writes("remove")
    def remove(self, paths: list[str | Path]) -> int:
        """Forget files and folders (catalog rows, vectors of every model). Returns files forgotten.

        Nothing on disk is touched. Paths need not exist any more.
        """
        if not paths:
            raise InvalidInputError("give at least one file or folder to forget")
        self._spaces.resync()  # also what a crashed `remove` left behind
        roots = [catalog_path(p) for p in paths]
        stored = list(self.catalog.files_under(roots)) + list(self.catalog.skipped_under(roots))
        if not stored:
            raise InvalidInputError(f"nothing catalogued under {', '.join(roots)}")
        return self._forget(stored)

    def _forget(self, paths: list[str]) -> int:
        removed = self.catalog.remove_files(paths)
        for row in self.catalog.models():
            if not self._spaces.recorded(row.spec, "image"):
                continue
            space = self._spaces.of_row(row, "image")
            space.remove(removed)
            space.save()
        return len(removed)

    @_writes("add-texts")
    def add_texts(
        self,
        texts: Iterable[str] | str | Path | None = None,
        *,
        source: str | Path | None = None,
        column: str = "caption",
        text_set: str = "default",
        model: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> AddTextsReport:
        """Add texts to a named set and embed every text that lacks a vector of `model` (a bar on
        stderr with `progress`).

        `texts`: the texts themselves (any iterable of str; blanks dropped); or `source`: a
        CSV/TSV or Parquet file (its `column`) or a .txt file (one text per line). A str or Path
        given as `texts` is a file, as `source` (the form callers used before).
        """
        if not text_set.strip():
            raise InvalidInputError("the text set needs a name (--set)")
        if isinstance(texts, (str, os.PathLike)):
            if source is not None:
                raise InvalidInputError("give either the texts or source=FILE, not both")
            texts, source = None, texts
        if texts is not None and source is None:
            rows = clean_texts(texts)
        elif source is not None and texts is None:
            rows = read_texts(Path(source), column=column)
        else:
            raise InvalidInputError("give either the texts or source=FILE, not both or neither")
        ensure_weights_available(model or self.default_model())  # offline: fail in a second
        self.encoder(model)  # loadable (weights at hand) before anything is stored
        added = self.catalog.add_texts(text_set, rows)
        embedded = self.embed_texts(model, batch_size=batch_size, progress=progress)
        return AddTextsReport(text_set, len(rows), added, embedded, self.model_id_of(model))

    @_writes("add-texts")
    def embed_texts(
        self, model: str | None = None, *, batch_size: int = 64, progress: bool = False
    ) -> int:
        """Embed all catalogued texts that have no vector of `model` yet; returns how many.

        With `progress`, a bar on stderr counts the texts, with their rate and the time left."""
        from searchengine.progress import progress_bar

        self._spaces.resync()
        space = self.space(model, "text", create=True)
        space.maintain()
        pending = self.catalog.texts_without_vector(space.model.id)
        if not pending:
            return 0
        encoder = self.encoder(model)
        bar = progress_bar(len(pending), desc="add-texts", unit="text", enabled=progress)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            ids = np.array([i for i, _ in chunk], dtype=np.int64)
            # (b, d) float32 unit, rounded as the catalog stores it: the index holds the same
            vectors = as_stored(encoder.encode_texts([t for _, t in chunk]))
            self.catalog.write_text_vectors(space.model.id, ids, vectors)
            space.add(ids, vectors)
            bar.update(len(chunk))
        bar.close()
        space.retrain_if_needed()
        space.save()
        return len(pending)

    @_writes("use-model")
    def use_model(self, model: str, *, force: bool = False) -> str:
        """Make `model` the home's default. Refused while its image space is incomplete (the old
        one keeps serving) unless `force`."""
        spec_id = self.model_id_of(model)
        self._spaces.resync()
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

    @_writes("tune")
    def embed_collection(
        self, model: str, *, settings: IngestSettings = IngestSettings(), progress: bool = False
    ) -> CollectionReport:
        """Give every catalogued photo (and text) a vector of `model`, reading nothing but the
        catalogued files (`ingest.collection`: decode as `index` does, the model runs only on
        content it has not embedded). Files gone, unreadable or changed since they were indexed
        are reported in `missing`, not forgotten (that is `index`'s work)."""
        from searchengine.ingest.collection import embed_collection

        ensure_weights_available(model)
        self._spaces.resync()
        space = self.space(model, "image", create=True)
        space.maintain()
        report = embed_collection(self.catalog, self.encoder(model), space, settings,
                                  progress=progress)
        if self.catalog.text_sets():
            self.embed_texts(model, progress=progress)
        return report

    @_writes("tune")
    def switch_model(
        self, model: str, *, settings: IngestSettings = IngestSettings(), progress: bool = False
    ) -> SwitchReport:
        """`embed_collection(model)`, then make `model` the default, holding the writer lock
        throughout: the default changes only once the new space has a vector of every photo and
        is saved (an interrupted or incomplete run leaves the old default serving)."""
        report = self.embed_collection(model, settings=settings, progress=progress)
        if not report.complete:
            return SwitchReport(report, switched=False, seconds=0.0)
        start = time.perf_counter()
        self.use_model(model)
        return SwitchReport(report, switched=True, seconds=time.perf_counter() - start)

    @_writes("remove-model")
    def remove_model(self, model: str, *, force: bool = False) -> RemovedModel:
        """Delete a model's vectors from the catalog and its index files (a checkpoint `tune`
        stored in the home's `models/` too); photos, texts and other models stay. The default
        model is refused unless `force`: another model whose image space is complete, if any,
        becomes the default. `model` is a spec as `status` lists it, or any `--model` value."""
        from searchengine.index.removal import model_row, remove_model

        row = model_row(self.catalog, model, self.model_id_of, self.home)
        return remove_model(self.catalog, self._spaces, row, force=force,
                            default_key=DEFAULT_MODEL_KEY, tuned=self.home / TUNED_MODELS)

    def export_embeddings(
        self,
        out: str | Path,
        *,
        model: str | None = None,
        text_set: str | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        dtype: str = "float16",
        force: bool = False,
        progress: bool = False,
    ) -> ExportReport:
        """The CLI's `export`: the image vectors of `model` (or, with `text_set`, that set's text
        vectors) as clip-retrieval's folder: `out/img_emb/img_emb_N.npy` ((n, d) `dtype`) and
        `out/metadata/metadata_N.parquet` (`image_path` and the catalog's columns), or
        `text_emb/` with `caption`; `shard_size` rows a shard. Holds the writer lock (none in a
        read-only home, where no one writes), so the folder is one state of the home; it
        appears complete or not at all (see `clipformat.writer`)."""
        from searchengine.clipformat.writer import export_folder

        held = (contextlib.nullcontext() if self.catalog.read_only
                else self.state.writing("export"))
        with held:
            space = self.space(model, "text" if text_set is not None else "image")
            return export_folder(self.catalog, space.model, Path(out), home=self.home,
                                 text_set=text_set, shard_size=shard_size, dtype=dtype,
                                 force=force, progress=progress)

    @_writes("import")
    def import_embeddings(
        self,
        folder: str | Path,
        *,
        model: str,
        text_set: str | None = None,
        base: str | Path | None = None,
        index_kind: str | None = None,
        progress: bool = False,
    ) -> ImportReport:
        """The CLI's `import` (a Python keyword): store the vectors of a folder in
        clip-retrieval's layout (ours or clip-retrieval's) as vectors of `model`, the model that
        made them, without running it; searchable at once. A dimension other than the model's,
        or a folder whose files do not align, is refused before anything is stored. Relative
        `image_path`s are taken from `base` (default: the current folder); see
        `clipformat.reader` for which rows are stored. `index_kind`: the image index's kind, as
        `index` takes it (recorded and kept; auto for a new space)."""
        from searchengine.clipformat.layout import read_layout
        from searchengine.clipformat.reader import check_model, configured_dim, import_folder

        if index_kind is not None:
            check_kind(index_kind)
        layout = read_layout(Path(folder).expanduser())
        spec = parse_model_spec(model)
        spec_id = self.model_id_of(model)
        row = self.catalog.find_model(spec_id)
        # the width from the stored row or the architecture's config (no torch); a checkpoint
        # (local) is loaded
        dim = row.dim if row is not None else configured_dim(spec) or self.encoder(model).dim
        check_model(layout, spec_id, dim)
        self.catalog.ensure_model(spec_id, dim, spec.digest)  # no model load in `space`
        self._spaces.resync()
        spaces = {
            modality: self.space(model, modality, create=True, kind=kind) if shards else None
            for modality, shards, kind in (
                ("image", layout.images, index_kind), ("text", layout.texts, None)
            )
        }
        if self.catalog.get_setting(DEFAULT_MODEL_KEY) is None:
            self.catalog.set_setting(DEFAULT_MODEL_KEY, spec_id)  # as `index` does first
        return import_folder(self.catalog, layout, image_space=spaces["image"],
                             text_space=spaces["text"], text_set=text_set,
                             base=Path(base).expanduser() if base is not None else None,
                             progress=progress)

    # -- queries --------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        model: str | None = None,
        offset: int = 0,
        like: Sequence[ImageQuery] = (),
        unlike: Sequence[ImageQuery] = (),
        filters: SearchFilter | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> SearchResult:
        """Text -> image: the `k` images closest to the sentence, best first (from `offset`).

        The sentence may be query arithmetic ("beach +sunset -0.5:people", see
        `query.arithmetic`), and images may join it as terms of weight +1 (`like`) or -1
        (`unlike`), each as `image_vector` takes it; `query_vector` makes the vector.
        `filters` (a `SearchFilter`: dates, camera, folder, place, formats) limits the photos
        searched, inside the vector search (`matched` says how many passed); `min_score` drops
        hits below a cosine in [-1, 1]; `sort` is "score" or "date" (newest first)."""
        check_refinements(filters, min_score, sort)  # before the model runs
        space = self.space(model, "image")
        vector = self.query_vector(query, model=model, like=like, unlike=unlike)
        return image_result(self.catalog, space, vector, query.strip(), k=k, offset=offset,
                            filters=filters, min_score=min_score, sort=sort)

    def query_vector(
        self,
        query: str,
        *,
        model: str | None = None,
        like: Sequence[ImageQuery] = (),
        unlike: Sequence[ImageQuery] = (),
    ) -> np.ndarray:
        """(1, d) float32 unit vector `search` looks for: the normalised weighted sum of the
        query's phrase vectors (all encoded in one `encode_texts` call) and the `like` (+1) and
        `unlike` (-1) images' vectors. A plain sentence without images is the encoder's own row
        for it, unchanged. InvalidInputError for a blank query without images, an empty term, a
        bad weight, only zero weights, or terms that cancel out."""
        like, unlike = _image_terms(like), _image_terms(unlike)
        if not isinstance(query, str) or (not query.strip() and not like and not unlike):
            check_query_text(query)  # the usual message for a blank query
        terms = parse_query(query)
        check_weights([term.weight for term in terms] + [1.0] * len(like) + [-1.0] * len(unlike))
        terms = [term for term in terms if term.weight != 0]
        phrases = list(dict.fromkeys(term.text for term in terms))  # each phrase encoded once
        rows: list[np.ndarray] = []  # (d,) float32 unit rows
        if phrases:
            encoded = self.text_encoder(model).encode_texts(phrases)  # (p, d)
            rows += [encoded[phrases.index(term.text)] for term in terms]
        for image in [*like, *unlike]:
            rows.append(self.image_vector(image, model=model)[0][0])
        weights = [term.weight for term in terms] + [1.0] * len(like) + [-1.0] * len(unlike)
        return combine(np.stack(rows), weights)

    def similar(
        self,
        image: ImageQuery,
        *,
        k: int = 10,
        model: str | None = None,
        offset: int = 0,
        filters: SearchFilter | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> SearchResult:
        """Image -> image: `image` as `image_vector` takes it (a path, an id, an image, bytes, a
        vector); `filters`, `min_score` and `sort` as `search` takes them."""
        check_refinements(filters, min_score, sort)
        space = self.space(model, "image")
        vector, label = self.image_vector(image, model=model)
        return image_result(self.catalog, space, vector, label, k=k, offset=offset,
                            filters=filters, min_score=min_score, sort=sort)

    def duplicates(
        self, *, threshold: float = DEFAULT_THRESHOLD, model: str | None = None
    ) -> DuplicateReport:
        """Groups of near-duplicate photos (burst shots, resized or re-encoded copies): the
        connected components of the photo pairs whose stored vectors have cosine >= `threshold`
        (in [-1, 1]), found through the image index's k-NN search; exact copies (same content
        hash) are one group whatever their vectors. Reads only."""
        check_threshold(threshold)
        return duplicate_groups(self.space(model, "image"), threshold)

    def lookup(
        self,
        image: ImageQuery,
        *,
        k: int = 5,
        text_set: str | None = None,
        model: str | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """Image -> text: the `k` texts (of one set, or all) that best describe the image.

        A home without texts, or without text vectors of `model`, is an error that names
        `add-texts` (never an empty answer)."""
        if not self.catalog.text_sets():
            raise NotIndexedError(
                f"{self.home} holds no texts to look up; add a text set first with "
                f"`searchengine add-texts FILE.csv --column caption --set NAME --home {self.home}`"
            )
        spec_id = self.model_id_of(model)
        row = self.catalog.find_model(spec_id)
        if row is None or not self.catalog.count_vectors("text", row.id):
            raise NotIndexedError(self._not_indexed_message(spec_id, "text"))
        space = self.space(model, "text")
        allowed = self._lookup_ids(text_set)
        vector, label = self.image_vector(image, model=model)
        hits = text_hits(self.catalog, space, vector, k, offset, allowed_ids=allowed)
        return SearchResult(label, space.model.spec, hits)

    def _lookup_ids(self, text_set: str | None) -> np.ndarray | None:
        """(n,) int64 text ids a lookup may answer with: those of `text_set`; without one, every
        set but the benchmark's scratch sets (`bench-...`, copies of a dataset's captions) when
        the home has others; None for all."""
        sets = self.catalog.text_sets()
        if text_set is None:
            own = [name for name in sets if not name.startswith(BENCH_TEXT_SET_PREFIX)]
            if not own or len(own) == len(sets):
                return None
            ids = [i for name in own for i in self.catalog.text_ids(name).values()]
            return np.unique(np.asarray(ids, dtype=np.int64))
        found = self.catalog.text_ids(text_set)
        if not found:
            raise InvalidInputError(
                f"no text set named {text_set!r}; sets: {', '.join(sets) or 'none yet'}"
            )
        return np.fromiter(found.values(), dtype=np.int64)

    def classify(
        self,
        image: ImageQuery,
        labels: list[str],
        *,
        templates: str = "ensemble",
        model: str | None = None,
    ) -> Classification:
        """Zero-shot: probability of each label (softmax over scaled cosines), best first."""
        from searchengine.eval.prompts import label_embeddings, templates_named

        labels = [label.strip() for label in labels if label.strip()]
        if len(labels) < 2:
            raise InvalidInputError("give at least two distinct labels, e.g. --labels 'dog,cat'")
        first: dict[str, str] = {}
        for label in labels:  # "dog" twice, or "dog" and "Dog", would split one probability
            if label.casefold() in first:
                raise InvalidInputError(
                    f"the labels {first[label.casefold()]!r} and {label!r} are the same label; "
                    "give each label once"
                )
            first[label.casefold()] = label
        if len(labels) > MAX_LABELS:
            raise InvalidInputError(f"{len(labels)} labels; classify takes at most {MAX_LABELS}")
        encoder = self.encoder(model)
        vector, label = self.image_vector(image, model=model)
        label_vectors = label_embeddings(encoder, labels, templates_named(templates))  # (L, d)
        logits = (label_vectors @ vector[0]) * self._logit_scale(encoder)  # (L,)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")
        scores = [LabelScore(labels[i], float(probabilities[i])) for i in order]
        return Classification(label, encoder.spec.id, scores)

    def match(self, image: ImageQuery, text: str, *, model: str | None = None) -> float:
        """Image-text consistency: the cosine between the image and the text, in [-1, 1]."""
        text = check_query_text(text)
        vector, _ = self.image_vector(image, model=model)
        return float(self.encoder(model).encode_texts([text])[0] @ vector[0])

    def image_vector(
        self, image: ImageQuery, *, model: str | None = None
    ) -> tuple[np.ndarray, str]:
        """(1, d) float32 unit vector of an image, and a label for it.

        `image` is a path (str or Path: a digit string is a path too, never an id), a catalog
        id (int), a PIL image, the bytes of an image file, or a (d,) or (1, d) float vector
        (made unit length). An id, or a catalogued file whose size and mtime are unchanged, uses
        the stored vector; images are decoded and embedded now.
        """
        from PIL import Image

        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            return self._stored_image_vector(check_media_id(int(image)), model)
        if isinstance(image, np.ndarray):
            row = self.catalog.find_model(self.model_id_of(model))
            dim = row.dim if row is not None else self.encoder(model).dim
            return unit_query_vector(image, dim, self.model_id_of(model)), "vector"
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self._embed_pil(decode_query_image(bytes(image)), model), "image bytes"
        if isinstance(image, Image.Image):
            return self._embed_pil(image, model), getattr(image, "filename", "") or "image"
        if isinstance(image, (str, os.PathLike)):
            return self._path_vector(check_query_path(image), model)
        raise InvalidInputError(
            "an image query is a path, a catalog id (int), a PIL image, image bytes or a "
            f"vector; got {type(image).__name__}"
        )

    def _path_vector(self, path: Path, model: str | None) -> tuple[np.ndarray, str]:
        stored = unchanged_file_vector(
            self.catalog, self.catalog.find_model(self.model_id_of(model)), path
        )
        if stored is not None:
            return stored, str(path)
        return self._embed_pil(decode_query_image(path), model), str(path)

    def _stored_image_vector(self, media_id: int, model: str | None) -> tuple[np.ndarray, str]:
        return stored_vector(self.catalog, self.space(model, "image").model, media_id)

    def _embed_pil(self, image, model: str | None) -> np.ndarray:
        return embed_pil(self.encoder(model), image)

    def embed_image(self, image, model: str | None = None) -> np.ndarray:
        """(1, d) float32 unit vector of a PIL image (uploads, tests)."""
        return self._embed_pil(image, model)

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
        hits = image_hits(self.catalog, space, vector, k, offset)
        return SearchResult(label, space.model.spec, hits)

    def search_in(
        self,
        query: str,
        folder: str | Path,
        *,
        k: int = 10,
        model: str | None = None,
        offset: int = 0,
        like: Sequence[ImageQuery] = (),
        unlike: Sequence[ImageQuery] = (),
        filters: SearchFilter | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> SearchResult:
        """`search` among the catalogued photos at or below `folder` only (the CLI's `--in`):
        `search` with `filters` narrowed to that folder, so `k` hits come back whenever `k`
        photos pass. InvalidInputError when `folder` is missing or a file, or when `filters`
        names a folder too. Reads only: `index` the folder first for photos added since."""
        from searchengine.query.folders import check_folder

        root = check_folder(folder)
        if filters is not None and filters.folder is not None:
            raise InvalidInputError(
                f"two folders given ({filters.folder} and {root}): search in one of them")
        within = (replace(filters, folder=root) if filters is not None
                  else SearchFilter(folder=root))
        return self.search(query, k=k, model=model, offset=offset, like=like, unlike=unlike,
                           filters=within, min_score=min_score, sort=sort)

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
        return search_space(space, queries, k, allowed_ids=allowed)

    def media_ids_by_path(self, paths: list[str | Path]) -> dict[str, int]:
        """`paths.catalog_path` of each path -> media id, for catalogued paths among `paths`."""
        wanted = [catalog_path(p) for p in paths]
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
                if count or self._spaces.recorded(row.spec, modality):
                    spaces.append(self._space_status(row, modality, count))
        return Status(
            home=str(self.home),
            images=self.catalog.count_media(),
            default_model=self.default_model(),
            spaces=spaces,
            text_sets=self.catalog.text_sets(),
            skipped=[(s.path, s.reason) for s in self.catalog.skipped()],
            warnings=self._spaces.changed_checkpoints(),
        )

    def _space_status(self, row: ModelRow, modality: str, count: int) -> SpaceStatus:
        """A space's line of `status`: the kind asked for and, from its manifest (one small
        file read), the kind built and how it was tuned."""
        asked = self._spaces.stored_kind(row.spec, modality)
        settings = self._spaces.stored_settings(row.spec, modality)
        try:
            manifest = read_manifest(index_path(self._spaces.home, row.spec, modality))
        except IndexMismatchError:
            manifest = None
        return SpaceStatus(
            row.spec,
            modality,
            count,
            manifest.kind if manifest else asked,
            chosen_by_auto=asked == "auto",
            recall=manifest.recall if manifest and manifest.kind != "flat" else (
                1.0 if manifest else None
            ),
            params=dict(manifest.params) if manifest else {},
            memory_bytes=manifest.memory_bytes if manifest else None,
            build_seconds=manifest.build_seconds if manifest else None,
            factory=manifest.factory if manifest else None,
            target_recall=settings.target_recall,
            memory_budget=settings.memory,
        )

    @_writes("check --repair", only_if="repair")
    def check(self, *, repair: bool = False, progress: bool = False) -> CheckReport:
        """Does every index file agree with the catalog? With `repair`, rebuild those that don't
        and remove the temporary files crashed saves left (`HomeSpaces.check`)."""
        checks, rebuilt = self._spaces.check(repair=repair, progress=progress)
        return CheckReport(checks, rebuilt=rebuilt)

    def models(self) -> list[ModelRow]:
        return self.catalog.models()


__all__ = [
    "AddTextsReport",
    "CheckReport",
    "Classification",
    "DuplicateReport",
    "Engine",
    "LabelScore",
    "SearchHit",
    "SearchResult",
    "SpaceStatus",
    "Status",
]
