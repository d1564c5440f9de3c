"""The FastAPI app: a JSON API and the web page over one Engine.

    app = create_app(Engine.open("indexes"), ServerSettings(model="ViT-B-32/random"))

Every route parses its input, calls one `SearchService` method and returns the library's
`as_dict()` shape. The spec is at /openapi.json; the page at /.
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from searchengine.engine import Engine
from searchengine.query.arithmetic import has_arithmetic
from searchengine.server import schemas
from searchengine.server.errors import ApiError, install_error_handlers
from searchengine.server.filters import Refined
from searchengine.server.guard import Guard
from searchengine.server.media import ServedImage
from searchengine.server.service import NONE, SearchService
from searchengine.server.settings import ServerSettings
from searchengine.server.uploads import Upload, read_upload
from searchengine.serving import INSTANCE_HEADER

COOKIE = "searchengine_token"
STATIC = resources.files("searchengine.server") / "static"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Error} for code in (400, 401, 404, 409, 413, 415, 500)
}
ERRORS[422] = {"model": schemas.Unprocessable}  # replaces FastAPI's (list-valued `detail`)
MAX_ID = 2**63 - 1  # catalog ids are SQLite INTEGERs (64-bit signed)
MAX_IMAGE_TERMS = 32  # like + unlike ids of one search (each a catalog read)


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """The app over `engine`; loads the model and opens its indexes before returning."""
    settings = settings or ServerSettings()
    service = SearchService(engine, settings)
    service.warm_up()
    service.start_watching()  # `serve --watch`: after the model is loaded, which it shares
    app = FastAPI(
        title="searchengine",
        description="Cross-modal (CLIP) search over a photo collection: text->image, "
        "image->image, image->text, zero-shot classification and image-text match.",
        version=_version(),
        docs_url=None,  # the Swagger and ReDoc pages load scripts from a CDN; the spec is enough
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(Guard, max_body_bytes=settings.max_upload_bytes,
                       allowed_hosts=settings.allowed_hosts)
    app.include_router(session_router, responses=ERRORS)
    app.include_router(api, dependencies=[Depends(require_token)], responses=ERRORS)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_api_route("/", _page, include_in_schema=False)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("searchengine")
    except PackageNotFoundError:
        return "0"


def _page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


# -- dependencies ---------------------------------------------------------------------------
# Checks of a few microseconds are `async`: FastAPI runs them on the event loop, where a plain
# `def` would cost a hop to a worker thread and back per dependency and request.

async def get_service(request: Request) -> SearchService:
    return request.app.state.service


Service = Annotated[SearchService, Depends(get_service)]


async def require_token(request: Request) -> None:
    """With a token configured, the request must carry it (Bearer header or session cookie)."""
    expected = request.app.state.service.settings.token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    supplied: str | None
    if header.lower().startswith("bearer "):
        supplied = header[7:].strip()
    else:
        supplied = request.cookies.get(COOKIE)
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ApiError(401, "this server needs its token: send `Authorization: Bearer TOKEN`, "
                            "or enter it on the web page", headers={"WWW-Authenticate": "Bearer"})


class Page(NamedTuple):
    limit: int
    offset: int


async def get_page(
    service: Service,
    k: Annotated[int | None, Query(ge=1, description="Hits per page (as the CLI's -k).")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Same as k.")] = None,
    offset: Annotated[int, Query(ge=0, description="Skip this many hits.")] = 0,
) -> Page:
    if k is not None and limit is not None and k != limit:
        raise ApiError(400, f"k={k} and limit={limit} disagree; give one of them")
    size = limit or k or 10
    if size > service.settings.max_k:
        raise ApiError(400, f"at most {service.settings.max_k} hits per page; use offset for more")
    if offset > service.settings.max_offset:
        raise ApiError(400, f"offset is at most {service.settings.max_offset}; "
                            "narrow the query instead")
    return Page(size, offset)


Paged = Annotated[Page, Depends(get_page)]
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="Catalog id of an indexed image.")]


async def get_text_set(
    service: Service,
    text_set: Annotated[str | None, Query(alias="set", description="Only texts of this set.")]
    = None,
) -> str | None:
    if text_set is not None:
        _check_length(text_set, service.settings.max_set_name_chars, "set")
    return text_set


TextSet = Annotated[str | None, Depends(get_text_set)]
Templates = Annotated[str, Query(pattern="^(single|ensemble)$", description="Prompt templates.")]


def get_upload(service: Service,
               image: Annotated[UploadFile, File(description="An image file.")]) -> Upload:
    settings = service.settings
    return read_upload(image.file, image.filename, max_bytes=settings.max_upload_bytes,
                       max_pixels=settings.max_upload_pixels)


Uploaded = Annotated[Upload, Depends(get_upload)]


def _check_length(value: str, limit: int, name: str) -> str:
    if len(value) > limit:
        raise ApiError(400, f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def _labels(service: SearchService, labels: str) -> list[str]:
    """The comma-separated labels, within the server's count and length limits."""
    settings = service.settings
    if len(labels) > settings.max_labels * (settings.max_label_chars + 1):
        raise ApiError(400, f"too many labels: at most {settings.max_labels}, of at most "
                            f"{settings.max_label_chars} characters each")
    parts = labels.split(",")
    if len(parts) > settings.max_labels:
        raise ApiError(400, f"{len(parts)} labels; at most {settings.max_labels} per request")
    for part in parts:
        _check_length(part.strip(), settings.max_label_chars, "a label")
    return parts


def _paged(request: Request, response: Response, result, page: Page) -> dict:
    """The result's JSON; a `Link: <...>; rel="next"` header when the page is full, and the
    server run's id (`searchengine.serving`: the CLI checks it is the server it meant)."""
    response.headers[INSTANCE_HEADER] = request.app.state.service.instance
    if len(result.hits) == page.limit:
        following = request.url.include_query_params(offset=page.offset + page.limit)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return result.as_dict()


# -- routes ---------------------------------------------------------------------------------

session_router = APIRouter(prefix="/api", tags=["session"])
api = APIRouter(prefix="/api")


@session_router.post("/session", status_code=204, responses={401: {"model": schemas.Error}})
def open_session(body: schemas.TokenBody, service: Service, response: Response) -> None:
    """Exchange the server's token for an HttpOnly cookie (how the web page signs in)."""
    expected = service.settings.token
    if expected is not None and not hmac.compare_digest(body.token.encode(), expected.encode()):
        raise ApiError(401, "wrong token")
    if expected is not None:
        response.set_cookie(COOKIE, expected, httponly=True, samesite="strict", path="/")


@api.get("/search", response_model=schemas.SearchResult, response_model_exclude_unset=True,
         tags=["search"])
async def search(
    request: Request, response: Response, service: Service, page: Paged,
    q: Annotated[str, Query(description="The sentence to search for. Query arithmetic: "
                            "`beach +sunset -people` searches for the normalised sum of the "
                            "phrases' vectors, with weights as `+2:sunset` or `-0.5:people`; "
                            "a + or - counts only after a space (`a t-shirt` is one phrase). "
                            "May be empty when `like` is given.")],
    like: Annotated[list[int] | None, Query(description="Catalog id of an indexed photo the "
                                            "hits should look like: a term of weight +1 "
                                            "(repeatable: like=3&like=5).")] = None,
    unlike: Annotated[list[int] | None, Query(description="Catalog id of an indexed photo the "
                                              "hits should not look like: a term of weight -1 "
                                              "(repeatable).")] = None,
    exact_scores: Annotated[bool, Query(description="Scores at full float32 precision instead "
                                                    "of rounded to 6 decimals.")] = False,
    refine: Refined = NONE,
) -> dict:
    """Text -> image; the same JSON as `searchengine search --json`. The filters (after,
    before, camera, folder, near, format) limit the photos searched, inside the vector search:
    `matched` then says how many passed; `min_score` drops weak hits, `sort=date` orders them
    by capture time."""
    _check_length(q, service.settings.max_query_chars, "q")
    images = (tuple(like or ()), tuple(unlike or ()))
    if len(images[0]) + len(images[1]) > MAX_IMAGE_TERMS:
        raise ApiError(400, f"at most {MAX_IMAGE_TERMS} like and unlike images together")
    for media_id in (*images[0], *images[1]):
        if not 0 < media_id <= MAX_ID:
            raise ApiError(404, f"no catalogued image with id {media_id}")
    lane = service.lanes.slow if any(images) or has_arithmetic(q) else service.lanes.fast
    result = await lane(service.search, q, limit=page.limit, offset=page.offset,
                        like=images[0], unlike=images[1], refine=refine)
    answer = _paged(request, response, result, page)
    if exact_scores:  # the CLI answering through `serve` rounds them itself, as it does locally
        for shown, hit in zip(answer["hits"], result.hits, strict=True):
            shown["score"] = hit.score
    return answer


@api.post("/search/image", response_model=schemas.SearchResult, response_model_exclude_unset=True,
          tags=["search"])
async def search_image(request: Request, response: Response, service: Service, page: Paged,
                       upload: Uploaded, refine: Refined = NONE) -> dict:
    """Image -> image, for an uploaded image (multipart field `image`); the filters as
    `/api/search` takes them."""
    result = await service.lanes.slow(service.search_upload, upload, limit=page.limit,
                                      offset=page.offset, refine=refine)
    return _paged(request, response, result, page)


@api.get("/similar/{media_id}", response_model=schemas.SearchResult,
         response_model_exclude_unset=True, tags=["search"])
async def similar(request: Request, response: Response, service: Service, page: Paged,
                  media_id: ImageId, refine: Refined = NONE) -> dict:
    """Image -> image for an indexed image ("more like this"); it is its own first hit (when it
    passes the filters, which `/api/search` documents)."""
    result = await service.lanes.fast(service.similar, media_id, limit=page.limit,
                                      offset=page.offset, refine=refine)
    return _paged(request, response, result, page)


@api.get("/lookup/{media_id}", response_model=schemas.SearchResult,
         response_model_exclude_none=True, tags=["image to text"])
async def lookup(request: Request, response: Response, service: Service, page: Paged,
                 media_id: ImageId, text_set: TextSet) -> dict:
    """Image -> text: the indexed texts closest to an indexed image."""
    result = await service.lanes.fast(service.lookup, media_id, limit=page.limit,
                                      offset=page.offset, text_set=text_set)
    return _paged(request, response, result, page)


@api.post("/lookup", response_model=schemas.SearchResult, response_model_exclude_none=True,
          tags=["image to text"])
async def lookup_upload(request: Request, response: Response, service: Service, page: Paged,
                        upload: Uploaded, text_set: TextSet) -> dict:
    """Image -> text for an uploaded image."""
    result = await service.lanes.slow(service.lookup, upload, limit=page.limit,
                                      offset=page.offset, text_set=text_set)
    return _paged(request, response, result, page)


@api.get("/classify/{media_id}", response_model=schemas.Classification, tags=["image to text"])
async def classify(service: Service, media_id: ImageId,
                   labels: Annotated[str, Query(description="Comma-separated, e.g. dog,cat,car.")],
                   templates: Templates = "ensemble") -> dict:
    """Zero-shot classification of an indexed image against the given labels."""
    parts = _labels(service, labels)
    return (await service.lanes.slow(service.classify, media_id, parts,
                                     templates=templates)).as_dict()


@api.post("/classify", response_model=schemas.Classification, tags=["image to text"])
async def classify_upload(
    service: Service, upload: Uploaded,
    labels: Annotated[str, Form(description="Comma-separated, e.g. dog,cat,car.")],
    templates: Templates = "ensemble",
) -> dict:
    """Zero-shot classification of an uploaded image against the given labels."""
    parts = _labels(service, labels)
    return (await service.lanes.slow(service.classify, upload, parts,
                                     templates=templates)).as_dict()


@api.get("/match/{media_id}", response_model=schemas.Match, tags=["image to text"])
async def match(
    service: Service, media_id: ImageId,
    text: Annotated[str, Query(description="The text to score against the image.")],
) -> dict:
    """Image-text consistency score of an indexed image and a text."""
    _check_length(text, service.settings.max_query_chars, "text")
    return await service.lanes.fast(service.match, media_id, text)


@api.post("/match", response_model=schemas.Match, tags=["image to text"])
async def match_upload(
    service: Service, upload: Uploaded,
    text: Annotated[str, Form(description="The text to score against the image.")],
) -> dict:
    """Image-text consistency score of an uploaded image and a text."""
    _check_length(text, service.settings.max_query_chars, "text")
    return await service.lanes.slow(service.match, upload, text)


@api.get("/status", response_model=schemas.Status, tags=["collection"])
def status(service: Service) -> dict:
    """Counts, models, index kinds, text sets and skipped files (as `searchengine status`)."""
    return service.status()


@api.get("/facets", response_model=schemas.Facets, tags=["collection"])
def facets(service: Service) -> dict:
    """The collection's folders, cameras and date span: what its photos can be filtered by."""
    return service.facets()


@api.get("/images/{media_id}/info", response_model=schemas.ImageInfo, tags=["images"])
def image_info(service: Service, media_id: ImageId) -> dict:
    """What the catalog knows about an image."""
    return service.info(media_id)


@api.get("/images/{media_id}", tags=["images"], response_class=Response,
         responses={200: {"content": {"image/*": {}}, "description": "The original file."}})
def original(request: Request, service: Service, media_id: ImageId) -> Response:
    """The original file of a catalogued image, if it is still the content that was indexed."""
    return _image_response(request, service.media.original(media_id))


@api.get("/images/{media_id}/thumbnail", tags=["images"], response_class=Response,
         responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."}})
def thumbnail(request: Request, service: Service, media_id: ImageId,
              size: Annotated[int, Query(description="Long side in pixels.")] = 256) -> Response:
    """A JPEG thumbnail (long side `size`, one of the server's thumbnail sizes)."""
    sizes = service.settings.thumbnail_sizes
    if size not in sizes:
        raise ApiError(400, f"size must be one of {', '.join(map(str, sizes))}")
    return _image_response(request, service.media.thumbnail(media_id, size))


def _image_response(request: Request, image: ServedImage) -> Response:
    headers = {"ETag": image.etag, "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == image.etag:
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(image.filename)}"
    return Response(image.data, media_type=image.media_type, headers=headers)
