"""User text made safe for Streamlit Markdown (md_escape): used by every page and widget module that writes a model id,
a text or an error line into Markdown.
"""

from __future__ import annotations

import re
from typing import Any

from core.infra.guards import visible_controls

#: Bare URLs and e-mail addresses: the Markdown renderer links them even when every character is escaped, so they
#: are shown as code spans (never linked) instead.
_LINKABLE = re.compile(r"(?i)(?:\b[a-z][a-z0-9+.-]*:/+|\bwww\.)\S*|[^\s@()\[\]<>'\"]+@[^\s@]+\.[^\s@]+")


def md_escape(text: Any) -> str:
    """User text made inert for Streamlit Markdown: every Markdown, HTML-entity and Streamlit directive character
    (`:red[…]`, `:material/…:`) backslash-escaped, bare URLs and e-mail addresses shown as code (so no live link),
    control and bidi characters shown as ⟨U+XXXX⟩."""
    out, pos = [], 0
    plain = visible_controls(str(text))
    for m in _LINKABLE.finditer(plain):
        out.append(_escape_md(plain[pos : m.start()]))
        out.append(_code_span(m.group()))
        pos = m.end()
    out.append(_escape_md(plain[pos:]))
    return "".join(out)


def _escape_md(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~$:&=])", r"\\\1", text)


def _code_span(text: str) -> str:
    """`text` as an inline code span whose fence is longer than any backtick run inside it."""
    longest = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
