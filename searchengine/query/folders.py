"""Search within one folder: `searchengine search QUERY --in FOLDER` (rclip's habit) indexes
the folder and then searches only the photos below it, as `search --folder` does (a
`SearchFilter` whose ids go into the vector search): k hits whenever k photos lie there.
"""

from __future__ import annotations

from pathlib import Path

from searchengine.errors import InvalidInputError
from searchengine.paths import catalog_path


def check_folder(folder: str | Path) -> str:
    """The folder as the catalog names paths; InvalidInputError when it is missing or a file."""
    path = Path(catalog_path(folder))
    if not path.exists():
        raise InvalidInputError(f"{folder} does not exist; give an existing folder")
    if not path.is_dir():
        raise InvalidInputError(f"{folder} is a file; --in takes a folder")
    return str(path)
