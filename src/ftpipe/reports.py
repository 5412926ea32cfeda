"""Small helpers that turn step results into the Markdown and HTML reports the KFP UI shows.

Plots are rendered with matplotlib (Agg) and inlined as base64 PNG, so one HTML file is the whole
report: the KFP UI shows HTML artifacts in an iframe that cannot fetch side files.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any


def figure_to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float = 6.0, height: float = 3.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


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
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows
    )
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
