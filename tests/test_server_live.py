"""The HTTP API over a real uvicorn on 127.0.0.1, fuzzed by schemathesis from its own OpenAPI spec.

Every operation in /openapi.json gets generated requests (valid ones, and invalid ones that the
server must refuse with a 4xx); every answer must be no server error, a status code and content
type the spec declares, and a body that conforms to the declared schema. All failures are
collected and reported together, with how many cases ran.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
schemathesis = pytest.importorskip("schemathesis")

from conftest import TINY_MODEL  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES_PER_OPERATION = 25  # x 2 modes x 14 operations: at most 700 requests
SECONDS_IN_ALL = 30.0  # shared by every operation and mode, whatever the machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(indexed_home: Path):
    """`searchengine serve` as the CLI runs it (loopback settings), on a free port, in a thread."""
    import uvicorn

    from searchengine.engine import Engine
    from searchengine.server.app import create_app
    from searchengine.server.runner import settings_for
    from searchengine.settings import EncoderSettings

    engine = Engine.open(indexed_home, encoder_settings=EncoderSettings(device="cpu"))
    app = create_app(engine, settings_for("127.0.0.1", token=None, model=TINY_MODEL))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            server_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def test_live_server_conforms_to_its_openapi_spec(live_server):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    cases: Counter[str] = Counter()
    failures: dict[str, str] = {}  # one line per distinct failure (operation and check message)

    runs = [(result.ok(), mode) for result in schema.get_all_operations()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for operation, mode in runs:
        fuzz(operation, mode, live_server, checks, cases, failures,
             seconds=SECONDS_IN_ALL / len(runs))

    total = sum(cases.values())
    print(f"schemathesis: {total} cases over {len(cases)} operations, "
          f"{len(failures)} distinct failures")
    assert total >= 100, cases
    assert not failures, "\n".join(sorted(failures.values()))


def fuzz(operation, mode, base_url: str, checks: list, cases: Counter, failures: dict, *,
         seconds: float) -> None:
    """Run one operation's generated cases (bounded in count and time), recording failures."""
    started = time.monotonic()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def exercise(case):
        if time.monotonic() - started > seconds:
            return
        cases[operation.label] += 1
        response = case.call(base_url=base_url, timeout=30)
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = f"{operation.label}: {failure.title}: {failure.message.strip()[:300]}"
                failures.setdefault(key, f"{key}\n    HTTP {response.status_code} "
                                         f"{response.text[:200]!r}\n    {case.as_curl_command()}")

    with contextlib.suppress(Unsatisfiable):  # no invalid request exists (no parameters)
        exercise()
