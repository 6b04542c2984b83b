"""BubbleFence core: leak-resistant train/validation/test splits on embedding arrays.

Pure numpy/scipy/torch; no FiftyOne import here (the FiftyOne side lives in
`bubblefence_plugin.dataset`, the operators in the plugin's `operators/`).
"""

from .config import BubbleFenceConfig
from .pipeline import BubbleFence, RoundResult

__all__ = ["BubbleFence", "BubbleFenceConfig", "RoundResult"]
