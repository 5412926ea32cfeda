"""Small helpers that turn step results into the Markdown and HTML reports the KFP UI shows.

Plots are rendered with matplotlib (Agg) and inlined as base64 PNG, so one HTML file is the whole
report: the KFP UI shows HTML artifacts in an iframe that cannot fetch side files.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Table:
    """A table for a report: ``columns`` and ``rows`` of cells."""

    columns: list[str]
    rows: list[list[Any]]


def figure_to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float = 6.0, height: float = 3.5, rows: int = 1, **options: Any):
    """A matplotlib figure and its axes (``rows`` of them stacked; ``options`` go to ``plt.subplots``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(width, height), **options)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_image(data_uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri}">'


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """One self-contained page; ``sections`` are (heading, already-escaped HTML body) pairs."""
    parts = [f"<h2>{html.escape(heading)}</h2>\n{body}" for heading, body in sections]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:60em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "th{background:#f3f3f3}.pass{color:#176e2d;font-weight:bold}.fail{color:#b00020;font-weight:bold}"
        f"</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "</body></html>"
    )


class Document:
    """One report, rendered both to Markdown (report.md) and to one self-contained HTML page (report.html).

    Build it section by section; every block appears in both renderings, so the two never disagree.
    Pictures (PNG data URIs) appear in the HTML only: Markdown viewers in the KFP UI cannot show them inline.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.intro: list[tuple[str, Any]] = []
        self.sections: list[tuple[str, list[tuple[str, Any]]]] = []

    def _blocks(self) -> list[tuple[str, Any]]:
        return self.sections[-1][1] if self.sections else self.intro

    def section(self, heading: str) -> Document:
        self.sections.append((heading, []))
        return self

    def text(self, paragraph: str) -> Document:
        """A paragraph of plain text (escaped in HTML; `code` spans are kept as written in Markdown)."""
        self._blocks().append(("text", paragraph))
        return self

    def items(self, lines: Sequence[str], css: str = "") -> Document:
        if lines:
            self._blocks().append(("items", (list(lines), css)))
        return self

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Document:
        self._blocks().append(("table", (list(columns), [list(row) for row in rows])))
        return self

    def image(self, data_uri: str, alt: str) -> Document:
        self._blocks().append(("image", (data_uri, alt)))
        return self

    def code(self, source: str, language: str = "") -> Document:
        self._blocks().append(("code", (source, language)))
        return self

    @staticmethod
    def _markdown_block(kind: str, value: Any) -> str | None:
        if kind == "text":
            return value
        if kind == "items":
            return "\n".join(f"- {line}" for line in value[0])
        if kind == "table":
            return markdown_table(*value)
        if kind == "code":
            return f"```{value[1]}\n{value[0]}\n```"
        return None  # images: HTML only

    @staticmethod
    def _html_block(kind: str, value: Any) -> str:
        if kind == "text":
            return f"<p>{html.escape(value)}</p>"
        if kind == "items":
            lines, css = value
            attribute = f" class='{css}'" if css else ""
            return "<ul>" + "".join(f"<li{attribute}>{html.escape(line)}</li>" for line in lines) + "</ul>"
        if kind == "table":
            return html_table(*value)
        if kind == "image":
            return html_image(*value)
        return f"<pre><code>{html.escape(value[0])}</code></pre>"

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for heading, blocks in [("", self.intro), *self.sections]:
            rendered = [text for kind, value in blocks if (text := self._markdown_block(kind, value)) is not None]
            if heading:
                parts.append(f"## {heading}")
            parts.extend(rendered)
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        intro = "".join(self._html_block(kind, value) for kind, value in self.intro)
        sections = [(heading, "".join(self._html_block(k, v) for k, v in blocks)) for heading, blocks in self.sections]
        page = html_page(self.title, sections)
        return page.replace("</h1>\n", f"</h1>\n{intro}", 1) if intro else page
