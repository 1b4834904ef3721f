"""The report pages' HTML: self-contained pages (inline CSS) of sections, figures and the key to the
overlay colours, written atomically. The pictures themselves are ``figures``."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from common_blocks.files import atomic_output
from common_blocks.reports.figures import PRED_COLOUR, TRUTH_COLOUR

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1360px; padding: 16px 24px;
       color: #222; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
figure { margin: 0 0 18px 0; }
figure img { max-width: 100%; border: 1px solid #ddd; background: white; }
figcaption { font-size: 0.9em; color: #444; margin-top: 2px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.95em; background: white; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 0.95em; }
.swatch { display: inline-block; width: 14px; height: 14px; vertical-align: middle; margin: 0 4px 0 10px; }
"""


def figure_html(src: str, caption: str = "") -> str:
    """An image of the page (a file name relative to the page) with an optional caption."""
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{quote(src)}" alt="{html.escape(caption or src)}">{text}</figure>'


def section_html(heading: str, body: str) -> str:
    return f"<h2>{html.escape(heading)}</h2>\n{body}\n"


def colour_legend(with_prediction: bool) -> str:
    """The key to the overlay colours."""
    items = [("truth (outside its mask)", TRUTH_COLOUR)]
    if with_prediction:
        items.append(("prediction (inside its mask)", PRED_COLOUR))
    return (
        '<p class="note">'
        + "".join(
            f'<span class="swatch" style="background: rgb{colour}"></span>{html.escape(text)}'
            for text, colour in items
        )
        + "</p>"
    )


def write_page(out_dir: Path, title: str, body: str) -> Path:
    """Write ``out_dir/index.html``, a self-contained page (inline CSS), atomically: call it last, so that
    the page never links a file not written yet."""
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )
    path = out_dir / "index.html"
    with atomic_output(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path
