"""What the Engine's operations return: small frozen records with a JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from searchengine.index.spaces import SpaceCheck
from searchengine.paths import display_path, path_fields


@dataclass(frozen=True)
class PhotoInfo:
    """What the catalog knows of a hit's photo (`searchengine.exif`): the capture time as the
    camera's clock showed it and its UTC offset when recorded, the camera model, the GPS
    position in decimal degrees, the size in pixels after EXIF rotation, the folder."""

    taken_at: datetime | None = None
    taken_offset: str | None = None
    camera: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    width: int | None = None
    height: int | None = None
    folder: str | None = None

    def as_dict(self) -> dict:
        """The keys `query.filters.PHOTO_FIELDS`, in that order."""
        located = self.latitude is not None and self.longitude is not None
        return {
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "taken_offset": self.taken_offset,
            "camera": self.camera,
            "gps": {"lat": self.latitude, "lon": self.longitude} if located else None,
            "width": self.width,
            "height": self.height,
            "folder": display_path(self.folder) if self.folder is not None else None,
        }


@dataclass(frozen=True)
class SearchHit:
    """One ranked result: an image (`path`, and `photo`: its metadata) or a text (`text`),
    with its catalog id.

    In `as_dict` (JSON), a path that is not valid UTF-8 shows its odd bytes as `\\xNN` and
    comes with `path_bytes`, its exact bytes in base64 (`searchengine.paths`); an image hit's
    metadata follows (`PHOTO_FIELDS`)."""

    rank: int
    score: float
    id: int
    path: str | None = None
    text: str | None = None
    photo: PhotoInfo | None = None

    def as_dict(self) -> dict:
        out: dict[str, object] = {"rank": self.rank, "score": round(self.score, 6), "id": self.id}
        if self.text is not None:
            out["text"] = self.text
        else:
            out.update(path_fields(self.path) if self.path is not None else {"path": None})
            if self.photo is not None:
                out.update(self.photo.as_dict())
        return out


@dataclass(frozen=True)
class SearchResult:
    """The hits of a search. `matched`: with a filter, how many photos passed it (the most hits
    any page can have); None without one."""

    query: str
    model: str
    hits: list[SearchHit]
    matched: int | None = None

    def as_dict(self) -> dict:
        out: dict[str, object] = path_fields(self.query, "query") | {  # `similar`'s: a path
            "model": self.model,
            "hits": [h.as_dict() for h in self.hits],
        }
        if self.matched is not None:
            out["matched"] = self.matched
        return out


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    image: str
    model: str
    labels: list[LabelScore]  # most probable first

    def as_dict(self) -> dict:
        return path_fields(self.image, "image") | {
            "model": self.model,
            "labels": [
                {"label": s.label, "probability": round(s.probability, 6)} for s in self.labels
            ],
        }


@dataclass(frozen=True)
class AddTextsReport:
    text_set: str
    read: int
    added: int
    embedded: int
    model: str


@dataclass(frozen=True)
class SpaceStatus:
    """One vector space: its index kind as built and how it was tuned (from its manifest)."""

    model: str
    modality: str
    vectors: int
    kind: str  # the kind built (what auto chose), else the kind asked for
    chosen_by_auto: bool = False  # the kind was chosen by `--index-kind auto`
    recall: float | None = None  # recall@10 measured against exact search (1.0 for flat)
    params: dict = field(default_factory=dict)  # search parameters, e.g. {"nprobe": 8}
    memory_bytes: int | None = None  # bytes of the index file (what loading it holds)
    build_seconds: float | None = None  # train + add + tune, when last built
    factory: str | None = None  # the faiss.index_factory string it was built from
    target_recall: float | None = None  # the recorded target of the recall guard
    memory_budget: int | None = None  # the recorded --index-memory, in bytes


@dataclass(frozen=True)
class Status:
    home: str
    images: int
    default_model: str
    spaces: list[SpaceStatus]
    text_sets: dict[str, int]
    skipped: list[tuple[str, str]]  # (path, reason)
    warnings: list[str] = field(default_factory=list)  # e.g. a checkpoint changed since indexed

    def as_dict(self) -> dict:
        return {
            "home": display_path(self.home),
            "images": self.images,
            "default_model": self.default_model,
            "spaces": [s.__dict__ for s in self.spaces],
            "text_sets": self.text_sets,
            "skipped": [path_fields(p) | {"reason": display_path(r)} for p, r in self.skipped],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class CheckReport:
    spaces: list[SpaceCheck]
    rebuilt: list[str] = field(default_factory=list)  # index files `--repair` rebuilt

    @property
    def repaired(self) -> bool:
        """Whether a repair rebuilt anything (not merely whether one was asked for)."""
        return bool(self.rebuilt)

    @property
    def ok(self) -> bool:
        return all(space.ok for space in self.spaces)
