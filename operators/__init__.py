"""The plugin's operators, one module each; `OPERATORS` is what `register(p)` registers."""

from .export import BubbleFenceExport
from .reset import BubbleFenceReset
from .split import BubbleFenceSplit

OPERATORS = (BubbleFenceSplit, BubbleFenceReset, BubbleFenceExport)

__all__ = ["OPERATORS", "BubbleFenceExport", "BubbleFenceReset", "BubbleFenceSplit"]
