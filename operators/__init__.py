"""The plugin's operators, one module each; `OPERATORS` is what `register(p)` registers."""

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
)

__all__ = [
    "OPERATORS",
    "BubbleFenceEmbed",
    "BubbleFenceExport",
    "BubbleFenceReport",
    "BubbleFenceReset",
    "BubbleFenceSample",
    "BubbleFenceSplit",
]
