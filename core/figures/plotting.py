"""The one plotting module: matplotlib's object-oriented API on an Agg canvas, never pyplot.

pyplot keeps a global registry of figures and is not thread-safe; the app draws from many sessions (threads) at
once and builds ZIPs in download callbacks. Every figure here is a `matplotlib.figure.Figure` with its own
`FigureCanvasAgg`, owned by the function that draws it, so any number of threads can draw at the same time.

figure(w, h) -> Figure          a new figure (inches) with an Agg canvas, at the one DPI
png(fig) -> bytes               PNG bytes of a figure
rgb_frame(fig) -> [H, W, 3]     the rendered pixels (for GIF frames)
gif(frames, frame_ms) -> bytes  an endless GIF
Blitter                         draw the static parts of an animation once, redraw only what changes per frame
token_label(tok, max_len)       the one sanitiser of token text for plot labels (raw_token_label: of raw tokens)
colormap(name)                  a registered colormap (no pyplot)
token_strips(tokens, strips)    the text once per strip, each token shaded by the strip's value at it
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

#: The one resolution of every PNG, GIF frame and PDF image.
DPI = 90

#: Control characters drawn as symbols that DejaVu Sans (matplotlib's font, the only one we ship) has: ↵ newline,
#: ⇤ carriage return (back to the line start; the control-picture ␍ U+240D is missing from DejaVu), ⇥ tab.
_VISIBLE = {"\n": "\u21b5", "\r": "\u21e4", "\t": "\u21e5"}
#: The byte-level BPE marks of a raw GPT-2 / Llama vocabulary token (Ġ space, Ċ newline, ĉ tab, č carriage return,
#: ▁ SentencePiece space), for raw_token_label.
_BYTE_LEVEL = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t", "\u010d": "\r", "\u2581": " "}


def figure(width: float, height: float) -> Figure:
    """A new Figure of width × height inches at DPI with its own Agg canvas (no global state)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


#: Margin around the drawn content of a tight PNG, inches (savefig's default pad_inches).
TIGHT_PAD = 0.1


def png(fig: Figure, *, tight: bool = False) -> bytes:
    """PNG bytes of `fig` at DPI. tight=True crops to the drawn content plus TIGHT_PAD: one draw, then the pixels
    inside the content's box are cut out; only content that reaches past the figure's edge (which savefig's tight
    mode would make room for) takes savefig's measuring draw plus a second draw."""
    if tight:
        cropped = _tight_crop(fig)
        if cropped is not None:
            return cropped
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def _tight_crop(fig: Figure) -> bytes | None:
    """The tight PNG from one draw, or None when the content's box leaves the canvas."""
    from PIL import Image

    fig.set_dpi(DPI)
    canvas = _canvas(fig)
    canvas.draw()
    box = fig.get_tightbbox(canvas.get_renderer()).padded(TIGHT_PAD)
    width, height = canvas.get_width_height()
    x0, y0, x1, y1 = (float(v) * DPI for v in box.extents)
    left, right = int(np.floor(x0)), int(np.ceil(x1))
    top, bottom = int(np.floor(height - y1)), int(np.ceil(height - y0))
    if left < 0 or top < 0 or right > width or bottom > height:
        return None
    pixels = np.asarray(canvas.buffer_rgba())[top:bottom, left:right, :3]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="png", dpi=(DPI, DPI))
    return buf.getvalue()


def rgb_frame(fig: Figure) -> np.ndarray:
    """Draw `fig` and return its pixels as uint8 [height, width, 3]."""
    canvas = _canvas(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _canvas(fig: Figure) -> FigureCanvasAgg:
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    return canvas


class Blitter:
    """Animation frames: the static parts of `fig` are drawn once; per frame the background is restored and only
    `artists` are drawn again."""

    def __init__(self, fig: Figure, artists: list[Any]) -> None:
        self.fig, self.artists = fig, artists
        self.canvas = _canvas(fig)
        for a in artists:
            a.set_animated(True)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)

    def frame(self) -> np.ndarray:
        self.canvas.restore_region(self.background)
        for a in self.artists:
            self.fig.draw_artist(a)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def gif(frames: list[np.ndarray], frame_ms: int) -> bytes:
    """An endlessly looping GIF of equally sized RGB frames, frame_ms milliseconds each. One 256-colour palette for
    every frame, chosen by median cut from a sample of all of them (every 3rd pixel of every 3rd row), and each frame
    mapped to it without dithering: deterministic, white stays white, and about a third of the time of a median cut
    of every full frame."""
    from PIL import Image

    arr = np.stack([np.ascontiguousarray(f, dtype=np.uint8) for f in frames])
    sample = np.ascontiguousarray(arr[:, ::3, ::3].reshape(-1, arr.shape[2] // 3 + (arr.shape[2] % 3 > 0), 3))
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    imgs = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in arr]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


def colormap(name: str) -> Colormap:
    """A registered matplotlib colormap by name."""
    return colormaps[name]


def token_strips(
    tokens: Sequence[str],
    strips: Sequence[tuple[str, np.ndarray]],
    *,
    width_chars: int = 90,
    target: int | None = None,
) -> Figure:
    """The text once per strip (title, values [T]), wrapped at `width_chars`: each token shaded in Oranges by
    value / the strip's maximum (1 when that is 0), the title above in bold, the `target` token outlined."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    labels = [token_label(t, max_len=14) for t in tokens]
    line_h, gap = 1.6, 0.3
    pos, x, y = [], 0.0, 0.0
    for lab in labels:
        w = max(len(lab), 1) + 0.6
        if x + w > width_chars and x > 0:
            x, y = 0.0, y + line_h
        pos.append((x, y, w))
        x += w + gap
    block_h = y + line_h + 1.8
    total_h = block_h * max(len(strips), 1)
    fig = figure(min(width_chars * 0.095 + 0.5, 10.0), 0.19 * total_h + 0.4)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5, width_chars + 0.5)
    ax.set_ylim(total_h, -0.5)
    ax.axis("off")
    cmap = colormap("Oranges")
    boxes, colours, edges = [], [], []
    for b, (title, values) in enumerate(strips):
        top = b * block_h
        scale = float(values.max()) or 1.0
        ax.text(0, top + 0.6, title, fontsize=9, fontweight="bold", va="center")
        for t, ((x0, y0, w), lab) in enumerate(zip(pos, labels)):
            yy = top + 1.8 + y0
            boxes.append(Rectangle((x0, yy - 0.65), w, 1.3))
            colours.append(cmap(0.7 * float(values[t]) / scale))  # ≤ 0.7 of the scale: black text stays readable
            edges.append("k" if t == target else "none")
            ax.text(x0 + 0.3, yy, lab, fontsize=8, family="monospace", va="center", ha="left")
    ax.add_collection(PatchCollection(boxes, facecolors=colours, edgecolors=edges, linewidths=1.0))
    return fig


def token_label(token: str, max_len: int | None = None) -> str:
    """Token text safe for a plot label.

    Newline, carriage return and tab become ↵ ⇤ ⇥; leading spaces (a word start in GPT-2/Llama tokens) become ␣;
    other non-printable characters become \\xNN, and a character the plot fonts lack (an emoji, a CJK character)
    becomes \\uXXXX, so matplotlib never warns "Glyph … missing" or draws a box; "$" is escaped so matplotlib never
    reads mathtext; an empty token is ∅; longer than max_len characters → shortened with "…".
    """
    s = str(token)
    stripped = s.lstrip(" ")
    s = "\u2423" * (len(s) - len(stripped)) + stripped
    s = "".join(_visible(c) for c in s)
    if max_len is not None and len(s) > max_len:
        s = s[: max_len - 1] + "\u2026"
    return s.replace("$", r"\$") if s else "\u2205"


def byte_level_text(token: str) -> str:
    """A raw vocabulary token ("Ġthe", "Ċ", "▁Paris") as the text it stands for (" the", "\\n", " Paris")."""
    return "".join(_BYTE_LEVEL.get(c, c) for c in str(token))


def raw_token_label(token: str, max_len: int | None = None) -> str:
    """token_label of a raw vocabulary token: its byte-level marks read as what they stand for first, so the label
    shows ␣the, ↵, ␣Paris rather than Ġthe, Ċ, ▁Paris."""
    return token_label(byte_level_text(token), max_len)


def _visible(c: str) -> str:
    if c in _VISIBLE:
        return _VISIBLE[c]
    if not c.isprintable():
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    if ord(c) not in _font_chars():
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
    return c


@functools.cache
def _font_chars() -> frozenset[int]:
    """Code points every font the figures use has (DejaVu Sans and DejaVu Sans Mono, regular and bold)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    common: frozenset[int] | None = None
    for family in ("DejaVu Sans", "DejaVu Sans Mono"):
        for weight in ("normal", "bold"):
            path = font_manager.findfont(font_manager.FontProperties(family=family, weight=weight))
            chars = frozenset(FT2Font(path).get_charmap())
            common = chars if common is None else common & chars
    return common or frozenset(range(0x20, 0x7F))


def token_labels(tokens: list[str], max_len: int | None = None) -> list[str]:
    """token_label of every token."""
    return [token_label(t, max_len) for t in tokens]


#: Heatmap axes with more tokens than this label every n-th token.
MAX_TICK_LABELS = 64


def token_ticks(ax: Axes, labels: list[str], axis: str, max_labels: int = MAX_TICK_LABELS) -> None:
    """Label the x or y axis of a token × token heatmap: every token up to max_labels, else every n-th; the
    font shrinks with the count."""
    n = len(labels)
    step = max(1, int(np.ceil(n / max_labels)))
    idx = list(range(0, n, step))
    size = 8 if n <= 24 else 6 if n <= 48 else 5
    # plain texts beside the axis, not tick labels: each of matplotlib's Tick objects (two tick lines, a grid line,
    # two labels) costs more than its text, and a 128-token heatmap had 128 of them (half the figure's time). The
    # axis title keeps its distance from the texts through labelpad, from their longest label.
    pad = 3.5  # points between the axis and the texts, as a tick's length plus its label pad
    shown = [labels[i] for i in idx]
    extent = max((len(t) for t in shown), default=0) * size * 0.62  # points: DejaVu Sans averages below 0.62 em
    offset = ScaledTranslation(0, -pad / 72, ax.figure.dpi_scale_trans)
    if axis == "x":
        ax.set_xticks([])
        trans = ax.get_xaxis_transform() + offset
        for i, t in zip(idx, shown):
            ax.text(i, 0, t, transform=trans, rotation=90, ha="center", va="top", fontsize=size)
        ax.xaxis.labelpad = pad + extent
    else:
        ax.set_yticks([])
        trans = ax.get_yaxis_transform() + ScaledTranslation(-pad / 72, 0, ax.figure.dpi_scale_trans)
        for i, t in zip(idx, shown):
            ax.text(0, i, t, transform=trans, ha="right", va="center", fontsize=size)
        ax.yaxis.labelpad = pad + extent
