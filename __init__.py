"""BubbleFence FiftyOne plugin: registers the operators in `operators/`, panels in `panels/`.

FiftyOne imports this file under a synthetic package name on every App request, so it
stays cheap: no model, no database work. The logic lives in the `bubblefence_plugin`
package next to this file; when that package is not installed (plugin copied or
symlinked into the plugins directory) it is imported from here, under its own name,
so that the App, delegated workers and Python users share one module.
"""

import importlib.util
import sys
from pathlib import Path


def _ensure_core_importable() -> None:
    if "bubblefence_plugin" in sys.modules or importlib.util.find_spec("bubblefence_plugin"):
        return
    package = Path(__file__).resolve().parent / "bubblefence_plugin"
    spec = importlib.util.spec_from_file_location(
        "bubblefence_plugin",
        package / "__init__.py",
        submodule_search_locations=[str(package)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bubblefence_plugin"] = module  # before exec: submodules import it
    spec.loader.exec_module(module)


_ensure_core_importable()

from .operators import OPERATORS  # noqa: E402
from .panels import PANELS  # noqa: E402


def register(p):
    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)
