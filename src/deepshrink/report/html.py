"""The page template and its building blocks: one self-contained HTML file (inline CSS, SVG and a few lines of
JS), readable on a phone (viewport meta, tables that scroll sideways, figures that scale to the width)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

Cell = Any
"""A table cell: text or a number, or ``(shown text, sort value)``; None shows as a dash."""

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fff;margin:0}
main{max-width:62rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.4rem 0}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1rem 0 .3rem}
.sub{color:#555;margin:0 0 1rem}
p,li,dd{overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.6rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:.5rem;padding:.5rem .7rem}
.card b{display:block;font-size:1.2rem}.card span{color:#555;font-size:.85rem}
ol.chain{padding-left:1.3rem;margin:.3rem 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.5rem 0}
table{border-collapse:collapse;font-size:.85rem;white-space:nowrap}
th,td{padding:.25rem .55rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f5f5f7;position:sticky;top:0}
table.sortable thead th{cursor:pointer}
table.sortable thead th[data-dir=asc]::after{content:" \\25B2"}table.sortable thead th[data-dir=desc]::after{content:" \\25BC"}
tfoot td{font-weight:600;border-top:2px solid #ccc}
figure{margin:.8rem 0}figure svg{width:100%;max-width:46rem;height:auto;display:block}
figcaption{font-size:.85rem;color:#444}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(19rem,1fr));gap:.8rem}
.grid figure{border:1px solid #eee;border-radius:.4rem;padding:.3rem;margin:0}
dl.kv{display:grid;grid-template-columns:auto 1fr;gap:0 .6rem;margin:.2rem 0;font-size:.8rem}dl.kv dt{color:#666}
dl.kv dd{margin:0}
.note{background:#fff8e1;border-left:3px solid #f0b400;padding:.4rem .7rem;font-size:.85rem}
footer{color:#777;font-size:.8rem;margin:2rem 0 1rem}
"""

SORT_JS = """
document.querySelectorAll("table.sortable thead th").forEach(function(th){th.addEventListener("click",function(){
var tb=th.closest("table").tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),
asc=th.dataset.dir!=="asc";th.parentNode.querySelectorAll("th").forEach(function(h){delete h.dataset.dir});
th.dataset.dir=asc?"asc":"desc";Array.from(tb.rows).sort(function(a,b){
var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent,
p=parseFloat(x),q=parseFloat(y),r=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?r:-r})
.forEach(function(r){tb.appendChild(r)})})});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: float | int | None, spec: str = ",") -> Cell:
    """A number cell: shown with ``spec``, sorted by value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return (format(value, spec), value)


def pct(value: float | None, digits: int = 1) -> Cell:
    return None if value is None else (f"{value:.{digits}f}%", value)


def _cell(tag: str, value: Cell) -> str:
    if value is None:
        return f"<{tag}>-</{tag}>"
    if isinstance(value, tuple):
        shown, key = value
        return f'<{tag} data-v="{esc(key)}">{esc(shown)}</{tag}>'
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _cell(tag, num(value))
    return f"<{tag}>{esc(value)}</{tag}>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], foot: Sequence[Sequence[Cell]] = (),
          sortable: bool = True, name: str = "") -> str:
    """A table in a sideways-scrolling box; ``sortable`` tables sort by a column when its header is tapped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in rows)
    tail = "".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in foot)
    attrs = (' class="sortable"' if sortable else "") + (f' id="{esc(name)}"' if name else "")
    return (f'<div class="scroll"><table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            + (f"<tfoot>{tail}</tfoot>" if tail else "") + "</table></div>")


def figure(svg: str, name: str, caption: str = "", extra: str = "") -> str:
    """One figure (an inline ``<svg>``) with its caption; ``data-figure`` names it for checks."""
    cap = f"<figcaption>{caption}{extra}</figcaption>" if caption or extra else ""
    return f'<figure data-figure="{esc(name)}">{svg}{cap}</figure>'


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline numbers: ``(value, what it is)``."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in items) + "</div>"


def kv(items: dict[str, str]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items()) + "</dl>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str, intro: str = "") -> str:
    lead = f"<p>{intro}</p>" if intro else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead}{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[str], footer: str) -> str:
    """The whole document: nothing outside it is needed to view it."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{subtitle}</p>"
        + "".join(sections)
        + f"<footer>{footer}</footer></main><script>{SORT_JS}</script></body></html>\n"
    )
