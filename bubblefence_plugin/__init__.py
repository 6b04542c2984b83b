"""BubbleFence core: leak-resistant train/validation/test splits on embedding arrays.

Pure numpy/scipy/torch; no FiftyOne import here (the FiftyOne side is the facade
`bubblefence_plugin.fo`, the operators are in the plugin's `operators/`).
"""

from .core.config import BubbleFenceConfig
from .core.pipeline import BubbleFence, RoundResult

__all__ = ["BubbleFence", "BubbleFenceConfig", "RoundResult"]
