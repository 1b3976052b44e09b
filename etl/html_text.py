"""HTML to text with lexbor (selectolax): visible text, boilerplate dropped, blocks as paragraphs."""

from __future__ import annotations

import secrets

_BOILERPLATE = (
    "script, style, noscript, template, nav, header, footer, aside, form, svg, iframe, button, "
    "[role=navigation], [role=search], [role=banner], [role=contentinfo], [aria-hidden=true], a.headerlink"
)
_BLOCKS = (
    "p, div, section, article, main, li, ul, ol, dl, dt, dd, h1, h2, h3, h4, h5, h6, blockquote, "
    "table, tr, td, th, br, hr, figure, figcaption, caption"
)
_BLOCK_MARK = "\x1e"  # record separator: never survives cleaning, so it cannot collide with text


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page without boilerplate; blocks become paragraphs, <pre> kept."""
    from selectolax.lexbor import LexborHTMLParser  # imported on first HTML page: text runs start faster

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node else ""
    for node in tree.css(_BOILERPLATE):
        node.decompose()
    preformatted: list[str] = []
    # each <pre> becomes a block holding only a placeholder; the nonce makes a placeholder that
    # the page's own text could spell out impossible
    tag = f"\x1a{secrets.token_hex(8)}:"
    for node in tree.css("pre"):
        preformatted.append(node.text(deep=True).strip("\n"))
        node.replace_with(f"{_BLOCK_MARK}{tag}{len(preformatted) - 1}{_BLOCK_MARK}")
    for node in tree.css(_BLOCKS):
        node.insert_before(_BLOCK_MARK)
        node.insert_after(_BLOCK_MARK)
    root = tree.body or tree.root
    text = root.text(separator="") if root else ""
    blocks = []
    for block in text.split(_BLOCK_MARK):
        if block.startswith(tag):
            blocks.append(preformatted[int(block[len(tag) :])])
        elif words := " ".join(block.split()):
            blocks.append(words)
    return "\n\n".join(b for b in blocks if b), title
