"""`searchengine serve`: a JSON API (FastAPI) and a web page over a home.

Import cost: FastAPI and uvicorn are only imported when this package is.
"""

from __future__ import annotations

from searchengine.server.app import create_app
from searchengine.server.settings import ServerSettings, is_loopback

__all__ = ["ServerSettings", "create_app", "is_loopback"]
