"""The plugin's operators, one module each; `OPERATORS` is what `register(p)` registers."""

from .export import BubbleFenceExport
from .report import BubbleFenceReport
from .reset import BubbleFenceReset
from .split import BubbleFenceSplit

OPERATORS = (BubbleFenceSplit, BubbleFenceReset, BubbleFenceExport, BubbleFenceReport)

__all__ = [
    "OPERATORS",
    "BubbleFenceExport",
    "BubbleFenceReport",
    "BubbleFenceReset",
    "BubbleFenceSplit",
]
