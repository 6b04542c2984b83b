"""A throwaway FiftyOne for a benchmark: its own database folder and plugins folder.

Call `sandbox` before importing fiftyone: FiftyOne reads these variables on import.
FiftyOne still attaches to a database service already running on the machine (a
test session's, say), whatever its folder: run benchmarks alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sandbox(prefix: str) -> Path:
    """A temp folder holding the database and a plugins folder that links this repo."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / "plugins").mkdir()
    # The repository root is the plugin; FiftyOne finds it through this link.
    (folder / "plugins" / "bubblefence").symlink_to(ROOT, target_is_directory=True)
    os.environ["FIFTYONE_DATABASE_DIR"] = str(folder / "db")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(folder / "plugins")
    os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    return folder
