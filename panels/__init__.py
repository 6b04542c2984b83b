"""The plugin's panels; `PANELS` is what `register(p)` registers."""

from .bubblefence_panel import BubbleFencePanel

PANELS = (BubbleFencePanel,)

__all__ = ["PANELS", "BubbleFencePanel"]
