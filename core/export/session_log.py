"""The session log: one entry per analysis of a session, rendered as a self-contained HTML page.

An entry is a plain dict (JSON-friendly, so the app can keep a list of them in its session state):
  time (ISO 8601), model, dtype, settings (dict), text, n_tokens, duration_s, cache_hit, warnings (list[str]).
All user text (the text, model id, settings values, warnings) is HTML-escaped when rendered.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from typing import Any

from core.analysis.result import AnalysisResult
from core.infra.guards import visible_controls
from core.infra.options import ExportOptions

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:70rem}
h1{font-size:1.4rem} .entry{border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.entry h2{font-size:1.05rem;margin:0 0 .4rem} table{border-collapse:collapse;font-size:.9rem}
td,th{text-align:left;padding:.15rem .8rem .15rem 0;vertical-align:top} pre{white-space:pre-wrap;
background:#f6f6f6;padding:.5rem;border-radius:4px;margin:.2rem 0} .hit{color:#2a7} .miss{color:#a60}
.warn{color:#b00} .muted{color:#777;font-size:.85rem}
"""


def entry_from_result(result: AnalysisResult, duration_s: float | None = None) -> dict[str, Any]:
    """A session-log entry for one analysis result. duration_s defaults to result.duration_s."""
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": result.model.model_id,
        "dtype": result.model.dtype,
        "settings": result.settings.to_dict(),
        "text": result.text,
        "n_tokens": int(result.n_tokens),
        "duration_s": float(result.duration_s if duration_s is None else duration_s),
        "cache_hit": bool(result.cache_hit),
        "warnings": [str(w) for w in result.warnings],
    }


def _e(value: Any) -> str:
    return html.escape(visible_controls("" if value is None else str(value)), quote=True)


def _entry_html(i: int, entry: dict[str, Any]) -> str:
    hit = entry.get("cache_hit")
    status = '<span class="hit">cache hit</span>' if hit else '<span class="miss">computed (cache miss)</span>'
    dur = entry.get("duration_s")
    dur_s = f"{float(dur):.2f} s" if isinstance(dur, (int, float)) else "–"
    settings = entry.get("settings") or {}
    settings_s = (
        json.dumps(settings, ensure_ascii=False, sort_keys=True) if isinstance(settings, dict) else str(settings)
    )
    warnings = entry.get("warnings") or []
    warn_html = (
        ("<ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in warnings) + "</ul>")
        if warnings
        else '<span class="muted">none</span>'
    )
    rows = [
        ("Time", _e(entry.get("time"))),
        ("Model", _e(entry.get("model"))),
        ("Dtype", _e(entry.get("dtype", ""))),
        ("Tokens", _e(entry.get("n_tokens", ""))),
        ("Duration", _e(dur_s)),
        ("Cache", status),
        ("Settings", f"<code>{_e(settings_s)}</code>"),
        ("Text", f"<pre>{_e(entry.get('text'))}</pre>"),
        ("Warnings", warn_html),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<div class="entry"><h2>Analysis {i}</h2><table>{body}</table></div>'


def render_html(entries: list[dict[str, Any]], title: str = "Transformer Model Analysis - session log") -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external resources) listing the entries in order."""
    items = "".join(_entry_html(i + 1, e) for i, e in enumerate(entries)) or "<p>No analysis in this session.</p>"
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="muted">{len(entries)} analysis run(s); written {now}.</p>'
        f"{items}</body></html>\n"
    )


def session_log_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: session_log.html from options.session_entries; one entry from the result when absent."""
    entries = list(options.session_entries or [entry_from_result(result)])
    return {"session_log.html": render_html(entries).encode("utf-8")}
