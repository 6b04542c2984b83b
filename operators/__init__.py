"""The plugin's operators, one module each; `OPERATORS` is what `register(p)` registers."""

from .calibrate import BubbleFenceCalibrate
from .embed import BubbleFenceEmbed
from .export import BubbleFenceExport
from .report import BubbleFenceReport
from .reset import BubbleFenceReset
from .sample import BubbleFenceSample
from .split import BubbleFenceSplit

OPERATORS = (
    BubbleFenceSplit,
    BubbleFenceEmbed,
    BubbleFenceReset,
    BubbleFenceExport,
    BubbleFenceReport,
    BubbleFenceSample,
    BubbleFenceCalibrate,
)

__all__ = [
    "OPERATORS",
    "BubbleFenceCalibrate",
    "BubbleFenceEmbed",
    "BubbleFenceExport",
    "BubbleFenceReport",
    "BubbleFenceReset",
    "BubbleFenceSample",
    "BubbleFenceSplit",
]
