"""Escaping of user strings (label, group, field and dataset names, error messages)
before they go into the Markdown the operators and the panel show in the App.

A label named ``[docs](https://evil.example/)`` must read as text there, not as a link,
and a ``|`` in a name must not break a table row.
"""

from __future__ import annotations

import re
from typing import Any

# CommonMark lets every ASCII punctuation character be escaped with a backslash; escaping
# them all also breaks GFM's bare-URL autolinks ("https\:", "www\.") and raw HTML.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def escape_markdown(value: Any) -> str:
    """``value`` as literal Markdown text on one line (no link, heading, list or cell)."""
    return _PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(value)))
