"""`difftrain report RUN --html`: the run's README as one self-contained HTML page (its pictures inlined as data URIs),
which opens offline in any browser and travels as one file.

The README is our own Markdown (report/card.py), so a small converter of what it uses is enough: headings, tables,
pictures, links, lists, code blocks, `code`, **bold**, and the raw <details> it wraps the config in. The model-card
front matter becomes a collapsed block of its own.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #1b1f24; line-height: 1.5; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eaeef2; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eaeef2; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
code { background: #f6f8fa; padding: 0 .2em; }
details { margin: 1em 0; }
"""
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}


def _inline(text: str, base: Path) -> str:
    """Escape `text`, then render pictures (inlined), links, `code` and **bold**."""
    def picture(m: re.Match) -> str:
        alt, src = m.group(1), m.group(2)
        file = (base / src) if not src.startswith(("http:", "https:", "data:")) else None
        if file is not None and file.is_file() and file.suffix.lower() in MIME:
            data = base64.b64encode(file.read_bytes()).decode()
            src = f"data:{MIME[file.suffix.lower()]};base64,{data}"
        return f'<img alt="{alt}" src="{src}">'

    parts = re.split(r"(`[^`]+`)", text)  # code spans are left as they are
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False)
        part = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", picture, part)
        part = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', part)
        part = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", part)
        out.append(part)
    return "".join(out)


def _table(rows: list[str], base: Path) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, aligns, body = cells[0], cells[1], cells[2:]
    right = [a.endswith(":") and not a.startswith(":") for a in aligns]
    th = "".join(f"<th>{_inline(c, base)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f'<td{" class=num" if r else ""}>{_inline(c, base)}</td>' for c, r in zip(row, right))
                  + "</tr>" for row in body)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""  # (a key-value table's header is empty)
    return f"<table>{thead}<tbody>{trs}</tbody></table>"


def markdown_to_html(text: str, base: Path) -> str:
    lines, out, i = text.splitlines(), [], 0
    if lines and lines[0] == "---":  # the model card's metadata
        end = lines.index("---", 1)
        out.append("<details><summary>Model card metadata (Hugging Face Hub)</summary><pre>"
                   + html.escape("\n".join(lines[1:end])) + "</pre></details>")
        i = end + 1
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph), base)}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:end])) + "</pre>")
            i = end + 1
            continue
        if m := re.match(r"(#{1,4}) (.*)", line):
            flush()
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2), base)}</h{len(m.group(1))}>")
        elif line.startswith("|"):
            flush()
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
            out.append(_table(lines[i:end], base))
            i = end
            continue
        elif line.startswith("- "):
            flush()
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith(("- ", "  "))), len(lines))
            items, item = [], []
            for entry in lines[i:end]:
                if entry.startswith("- ") and item:
                    items.append(" ".join(item))
                    item = []
                item.append(entry[2:].strip())
            items.append(" ".join(item))
            out.append("<ul>" + "".join(f"<li>{_inline(t, base)}</li>" for t in items) + "</ul>")
            i = end
            continue
        elif line.startswith(("<details", "</details", "<summary")):
            flush()
            out.append(line)  # our own markup around the config
        elif not line.strip():
            flush()
        else:
            paragraph.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)


def write_html(run_dir: Path) -> Path:
    """RUN/report.html from RUN/README.md."""
    from difftrain import atomic

    readme = (run_dir / "README.md").read_text(encoding="utf-8")
    body = markdown_to_html(readme, run_dir)
    page = (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>difftrain run {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    path = run_dir / "report.html"
    atomic.write_text(path, page)
    return path
