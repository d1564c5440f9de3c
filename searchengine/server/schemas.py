"""Response bodies of the API, as pydantic models (they make the OpenAPI spec at /openapi.json).

They mirror the library's `as_dict()` shapes exactly, so `GET /api/search` answers the same JSON
as `searchengine search --json`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

BYTES_HELP = "Only where the path is not UTF-8 (then shown with \\xNN escapes): its bytes, base64."


class Gps(BaseModel):
    lat: float = Field(description="Latitude in decimal degrees, north positive.")
    lon: float = Field(description="Longitude in decimal degrees, east positive.")


class Hit(BaseModel):
    rank: int = Field(description="1-based rank over the whole result (offset included).")
    score: float = Field(description="Cosine similarity, rounded to 6 decimals "
                        "(full float32 precision with `exact_scores=true`).")
    id: int = Field(description="Catalog id: of the image (image hits) or the text (text hits).")
    path: str | None = Field(None, description="Image hits: the catalogued file.")
    path_bytes: str | None = Field(None, description=BYTES_HELP)
    text: str | None = Field(None, description="Text hits: the text.")
    taken_at: str | None = Field(
        None, description="Image hits: the EXIF capture time (DateTimeOriginal) as the camera's "
        "clock showed it, ISO 8601 without a zone, e.g. 2024-07-01T14:03:22; left out when not "
        "recorded.")
    taken_offset: str | None = Field(
        None, description="Image hits: that clock's offset from UTC (EXIF OffsetTimeOriginal), "
        "e.g. +02:00, when recorded.")
    camera: str | None = Field(None, description="Image hits: the EXIF camera model.")
    gps: Gps | None = Field(None, description="Image hits: where it was taken (EXIF GPS).")
    width: int | None = Field(None, description="Image hits: pixels, after EXIF rotation.")
    height: int | None = Field(None, description="Image hits: pixels, after EXIF rotation.")
    folder: str | None = Field(None, description="Image hits: the folder holding the file.")


class SearchResult(BaseModel):
    query: str = Field(description="The query sentence, image path or upload name.")
    query_bytes: str | None = Field(None, description=BYTES_HELP)
    model: str
    hits: list[Hit]
    matched: int | None = Field(
        None, description="With a filter: how many photos passed it (the most hits any page "
        "can hold); 0 when none did, which is no error.")


class LabelProbability(BaseModel):
    label: str
    probability: float


class Classification(BaseModel):
    image: str
    model: str
    labels: list[LabelProbability] = Field(description="Most probable first; they sum to 1.")


class Match(BaseModel):
    image: str
    text: str
    model: str
    score: float = Field(description="Cosine between image and text, in [-1, 1] (low = mismatch).")


class Space(BaseModel):
    model: str
    modality: str
    vectors: int
    kind: str = Field(description="The index kind built (what auto chose).")
    chosen_by_auto: bool = False
    recall: float | None = Field(None, description="recall@10 against exact search (1.0: flat).")
    params: dict[str, int] = Field(default_factory=dict, description="e.g. {\"nprobe\": 8}.")
    memory_bytes: int | None = None
    build_seconds: float | None = None
    factory: str | None = Field(None, description="The faiss.index_factory string.")
    target_recall: float | None = None
    memory_budget: int | None = Field(None, description="--index-memory, in bytes.")


class Skipped(BaseModel):
    path: str
    path_bytes: str | None = Field(None, description=BYTES_HELP)
    reason: str


class Status(BaseModel):
    home: str
    images: int
    default_model: str
    spaces: list[Space]
    text_sets: dict[str, int]
    skipped: list[Skipped]
    warnings: list[str] = Field(
        default_factory=list, description="E.g. a checkpoint that changed since it was indexed."
    )
    serving_model: str = Field(description="The model this server answers with.")


class ImageInfo(BaseModel):
    id: int
    path: str
    path_bytes: str | None = Field(None, description=BYTES_HELP)
    size: int = Field(description="Bytes on disk when indexed.")
    width: int = Field(description="Pixels, after EXIF rotation.")
    height: int
    format: str
    taken_at: str | None = Field(
        None, description="EXIF capture time as the camera recorded it, when recorded: ISO 8601 "
        "local time of the camera, without a time zone (EXIF 2.2 stores none), e.g. "
        "2024-07-01T14:03:22.")
    camera: str | None = Field(None, description="EXIF camera model, when recorded.")
    indexed_at: datetime = Field(description="When the file was indexed, in UTC (ISO 8601 with "
                                             "offset).")


class Error(BaseModel):
    detail: str = Field(description="What went wrong and, where possible, what to do.")


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. [\"query\", \"k\"].")
    msg: str
    type: str


class Unprocessable(BaseModel):
    """The 422 body: a request that does not match the spec, or an image that cannot be decoded.
    (It replaces FastAPI's own 422 schema, whose `detail` is a list: not what this server sends.)"""

    detail: str = Field(description="Every problem in one readable sentence.")
    errors: list[Problem] = Field(default_factory=list, description="A request that does not "
                                  "match the spec: the same problems, one object each.")


class TokenBody(BaseModel):
    token: str = Field(max_length=1024)


class FolderCount(BaseModel):
    folder: str = Field(description="A folder (absolute path) that holds photos at any depth.")
    count: int = Field(description="Photos under it, at any depth.")


class CameraCount(BaseModel):
    camera: str = Field(description="An EXIF camera model, as recorded.")
    count: int


class Facets(BaseModel):
    """What the collection offers to filter on (the web page's folder, camera and date choices)."""

    folders: list[FolderCount] = Field(
        description="Folders holding photos and those between them and the collection's common "
        "root, sorted by path; at most 500, the shallowest first.")
    cameras: list[CameraCount] = Field(description="Camera models, the most photos first.")
    first_taken: str | None = Field(None, description="Earliest EXIF capture time, if any.")
    last_taken: str | None = Field(None, description="Latest EXIF capture time, if any.")
