"""BubbleFence FiftyOne plugin: registers the operators in `operators/`, panels in `panels/`.

FiftyOne imports this file under a synthetic package name on every App request, so it
stays cheap: no model, no database work. The logic is the installed `bubblefence_plugin`
package (`pip install -e .` in this folder, as `scripts/setup.sh` does), which the App,
delegated workers, the CLI and Python users all import under that one name.
"""

try:
    import bubblefence_plugin  # noqa: F401
except ImportError as error:  # the plugin folder was linked without installing it
    raise ImportError(
        "The BubbleFence plugin needs its package in the Python environment that runs "
        f"FiftyOne: run `pip install -e {__path__[0]}` there, then restart the App."
    ) from error

from .operators import OPERATORS  # noqa: E402
from .panels import PANELS  # noqa: E402


def register(p):
    for operator in OPERATORS:
        p.register(operator)
    for panel in PANELS:
        p.register(panel)
