"""Markdown → sanitised HTML for document pages."""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

# Raw HTML in the source is escaped by markdown-it ("html": False); nh3 then
# allow-lists what the renderer produced, so neither a title nor a body can
# smuggle a <script> or an on* attribute onto the page.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable("strikethrough")


def render_markdown(source: str) -> str:
    return nh3.clean(_markdown.render(source or ""), link_rel="noopener noreferrer nofollow")
