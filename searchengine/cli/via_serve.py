"""`search` and `similar id:N` answered by a `serve` running on the home: no torch loaded here.

`serve` records itself in HOME/serve.json (`searchengine.serving`). When that record is live
and the server uses the model this command would, the search is one HTTP request on loopback
(standard library only), and the answer prints exactly as a local search prints it; the note on
stderr names the server. Anything else (no record, another model, no answer, an error, another
program on the port) searches here, with a note where a server was meant to answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from searchengine.cli.filters import empty_line, filter_params
from searchengine.cli.options import echo_json, echo_line, echo_table
from searchengine.query.filters import PHOTO_FIELDS
from searchengine.serving import INSTANCE_HEADER, ServeRecord, read_record

TIMEOUT_SECONDS = 10.0  # a server answering slower than this is treated as not answering


def search_through_serve(home: Path, query: str, *, model: str | None, k: int, offset: int,
                         as_json: bool, like: tuple = (), unlike: tuple = (), filters=None,
                         min_score: float | None = None, sort: str = "score") -> bool:
    """Ask the `serve` running on `home` for a text search and print its answer as `search`
    does; False (nothing printed on stdout) when no such server can answer it. `like` and
    `unlike` (ints: catalog ids; else files) travel as ids; a file among them is searched
    here (the API takes indexed photos only). The filters, `min_score` and `sort` travel as
    the API's query parameters (`cli.filters.filter_params`)."""
    if not all(isinstance(image, int) for image in (*like, *unlike)):
        if read_record(Path(home)) is not None:
            _note("--like/--unlike name a file, which the serve cannot read; searching here "
                  "(id:N is sent to it)")
        return False
    params: dict = {"q": query}
    if like:
        params["like"] = list(like)
    if unlike:
        params["unlike"] = list(unlike)
    params |= filter_params(filters, min_score, sort)
    return _through_serve(home, "/api/search", params, model=model, k=k, offset=offset,
                          as_json=as_json, min_score=min_score, filtered=filters is not None)


def similar_through_serve(home: Path, media_id: int, *, model: str | None, k: int, offset: int,
                          as_json: bool, filters=None, min_score: float | None = None,
                          sort: str = "score") -> bool:
    """As `search_through_serve`, for `similar id:N` (the stored vector of catalog id N)."""
    return _through_serve(home, f"/api/similar/{int(media_id)}",
                          filter_params(filters, min_score, sort), model=model, k=k,
                          offset=offset, as_json=as_json, min_score=min_score,
                          filtered=filters is not None)


def _through_serve(home: Path, path: str, params: dict, *, model: str | None, k: int,
                   offset: int, as_json: bool, min_score: float | None = None,
                   filtered: bool = False) -> bool:
    record = read_record(Path(home))
    if record is None or not _same_model(record, model):
        return False
    answer = _ask(record, path, {**params, "k": k, "offset": offset, "exact_scores": "true"})
    if answer is None:
        return False
    if filtered and "matched" not in answer:  # a server from before the filters ignores them
        _note(f"the serve at {record.url} does not know the search filters (an older version: "
              "restart it); searching here")
        return False
    try:
        _print(answer, as_json, min_score)
    except (KeyError, TypeError, ValueError):
        _note(f"the serve at {record.url} sent an answer this command cannot read; "
              "searching here")
        return False
    _note(f"answered by the serve at {record.url} (--no-serve searches here)")
    return True


def _same_model(record: ServeRecord, model: str | None) -> bool:
    """Whether the server answers with the model this command would use: the same `--model`,
    or neither pins one (both use the home's default model as it is at the request)."""
    if record.model == model:
        return True
    served = f"model {record.model}" if record.model else "the home's default model"
    _note(f"the serve at {record.url} uses {served}; searching here")
    return False


def _ask(record: ServeRecord, path: str, params: dict) -> dict | None:
    """The server's JSON answer to GET `path`, or None after a note saying why not."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    headers = {"Accept": "application/json"}
    if record.token:
        token = os.environ.get("SEARCHENGINE_TOKEN")
        if not token:
            _note(f"the serve at {record.url} needs its token ($SEARCHENGINE_TOKEN); "
                  "searching here")
            return None
        headers["Authorization"] = f"Bearer {token}"
    query = urlencode(params, doseq=True)  # like=[3, 5]: like=3&like=5
    request = urllib.request.Request(f"{record.url}{path}?{query}", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            instance = response.headers.get(INSTANCE_HEADER)
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        _note(f"the serve at {record.url} answered HTTP {error.code} ({_detail(error)}); "
              "searching here")
        return None
    except (OSError, ValueError) as error:  # URLError, refused, timed out, not JSON
        reason = getattr(error, "reason", None) or error
        _note(f"the serve at {record.url} did not answer ({reason}); searching here")
        return None
    if instance != record.instance:
        _note(f"{record.url} is not the serve that HOME/serve.json names any more; "
              "searching here")
        return None
    return answer if isinstance(answer, dict) else None


def _detail(error) -> str:
    try:
        return str(json.load(error)["detail"])
    except (OSError, ValueError, KeyError, TypeError):
        return error.reason or "no detail"


def _print(answer: dict, as_json: bool, min_score: float | None = None) -> None:
    """Print a search answer as `collection._print_result` prints the local SearchResult (the
    API's fields are `SearchResult.as_dict`'s; its scores come at full precision)."""
    hits = answer["hits"]
    matched = answer.get("matched")
    if as_json:
        payload = {key: answer[key] for key in ("query", "query_bytes") if key in answer}
        payload["model"] = answer["model"]
        payload["hits"] = [_hit_fields(hit) for hit in hits]
        if matched is not None:
            payload["matched"] = int(matched)
        echo_json(payload)
        return
    echo_line(f"{answer['query']}  [{answer['model']}]")
    if not hits:
        click.echo(empty_line(matched, min_score))
        return
    if matched is not None:
        click.echo(f"{matched} photo{'s' if matched != 1 else ''} pass the filters")
    column = "text" if "text" in hits[0] else "path"
    rows = [[hit["rank"], float(hit["score"]), hit["id"], hit.get("text", hit.get("path"))]
            for hit in hits]
    echo_table(["rank", "score", "id", column], rows)


def _hit_fields(hit: dict) -> dict:
    """A hit as `SearchHit.as_dict` writes it: the score rounded to 6 decimals, keys in order."""
    out = {"rank": hit["rank"], "score": round(float(hit["score"]), 6), "id": hit["id"]}
    if "text" in hit:
        out["text"] = hit["text"]
    else:
        out["path"] = hit.get("path")
        if "path_bytes" in hit:
            out["path_bytes"] = hit["path_bytes"]
        if any(key in hit for key in PHOTO_FIELDS):  # a catalogued photo's metadata
            out.update({key: hit.get(key) for key in PHOTO_FIELDS})
    return out


def _note(message: str) -> None:
    echo_line(message, err=True)
