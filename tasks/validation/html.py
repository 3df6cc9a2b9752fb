"""A validation report as one self-contained HTML page: readable offline and in MLflow's
artifact preview (inline CSS, no script, nothing fetched), written beside the GX Data Docs,
whose pages load their styles from CDNs and render blank without a network.

    html = render(json.loads(Path("reports/validation/unlabeled.json").read_text()),
                  pd.read_csv("reports/validation/unlabeled_table.csv"), unit=IMAGES)

``unit`` (tasks/validation/source_check.py) says what the rows are and what each fault means
(``IMAGES`` in tasks/image/checks.py, ``DOCUMENTS`` in tasks/text/checks.py).

It shows, in the order a reader asks: passed or failed and why, the counts, every fault
with the rows that have it, the failed expectations, what was skipped or converted, the
dataset statistics beside the drift reference, and what the files are (formats, modes, sizes,
where the table has those columns).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.validation.source_check import Unit

MAX_FILES = 200  # offending rows listed; the table CSV holds them all

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.meta { color: #57606a; font-size: 13px; margin-bottom: 16px; word-break: break-all; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; vertical-align: middle;
         margin-left: 8px; }
.pass { background: #dafbe1; color: #116329; } .fail { background: #ffebe9; color: #a40e26; }
.decision { padding: 10px 14px; border-left: 4px solid; margin: 12px 0; }
.decision.pass { border-color: #1a7f37; } .decision.fail { border-color: #cf222e; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 20px; } .card span { color: #57606a; font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, "DejaVu Sans Mono", monospace; background: #f6f8fa; padding: 1px 4px;
       border-radius: 4px; overflow-wrap: anywhere; }
td.rule code { white-space: nowrap; }
.muted { color: #57606a; } .bad { color: #a40e26; font-weight: 600; }
footer { margin-top: 32px; color: #57606a; font-size: 12px; }
"""


def _rows(cells: Iterable[Iterable[str]]) -> str:
    return "".join("<tr>" + "".join(cells_) + "</tr>" for cells_ in ([*c] for c in cells))


def _td(value, num: bool = False) -> str:
    return f'<td class="num">{escape(str(value))}</td>' if num else f"<td>{escape(str(value))}</td>"


def _counts_table(title: str, counts: dict, what: str, meanings: dict | None = None, things: str = "files") -> str:
    if not counts:
        return ""
    head = f'<tr><th>{escape(what)}</th><th class="num">{things}</th>' + ("<th>meaning</th>" if meanings else "") + "</tr>"
    body = _rows(
        [f"<td><code>{escape(str(k))}</code></td>", _td(v, num=True)] + ([_td(meanings.get(k, ""))] if meanings else [])
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    return f"<h2>{escape(title)}</h2><table>{head}{body}</table>"


def _failures(title: str, failures: list[dict]) -> str:
    if not failures:
        return ""
    body = _rows(
        [
            f"<td class='rule'><code>{escape(f['expectation'])}</code></td>",
            _td(f.get("column") or ""),
            _td(f.get("observed") or f"{f.get('unexpected_count', 0)} bad"),
            _td("; ".join(f.get("examples") or [])),
        ]
        for f in failures
    )
    return f"<h2>{escape(title)}</h2><table><tr><th>expectation</th><th>column</th><th>result</th><th>examples</th></tr>{body}</table>"


def _bad_files(report: dict, table, unit: Unit) -> str:
    if table is not None and "fault" in table.columns:
        bad = table[table["fault"].fillna("").astype(str) != ""]
        rows = [(r[unit.key], r["fault"], r.get("detail", "")) for _, r in bad.head(MAX_FILES).iterrows()]
        total = len(bad)
    else:  # the report alone keeps "name: fault (detail)" for the first rows
        rows = [(line, "", "") for line in report.get("bad_files", [])]
        total = max(len(rows), sum(report.get("faults", {}).values()))
    if not rows:
        return ""
    more = f' <span class="muted">(first {len(rows)} of {total}; all in the table CSV)</span>' if total > len(rows) else ""
    body = _rows(
        [f"<td><code>{escape(str(p))}</code></td>", f'<td class="bad">{escape(str(f))}</td>', _td(d if isinstance(d, str) else "")]
        for p, f, d in rows
    )
    return f"<h2>Offending {unit.rows}{more}</h2><table><tr><th>{unit.rows[:-1]}</th><th>fault</th><th>detail</th></tr>{body}</table>"


def _statistics(report: dict, unit: Unit) -> str:
    stats = report.get("statistics") or {}
    if not stats:
        return ""
    reference = (report.get("reference") or {}).get("statistics", report.get("reference") or {})
    has_ref = any(isinstance(reference.get(k), int | float) for k in stats)
    head = (
        '<tr><th>statistic</th><th class="num">this data</th>'
        + ('<th class="num">reference</th><th class="num">difference</th>' if has_ref else "")
        + "</tr>"
    )
    rows = []
    for key, value in stats.items():
        cells = [_td(key), _td(f"{value:.4f}", num=True)]
        ref = reference.get(key)
        if has_ref:
            cells += (
                [_td(f"{ref:.4f}", num=True), _td(f"{value - ref:+.4f}", num=True)] if isinstance(ref, int | float) else [_td(""), _td("")]
            )
        rows.append(cells)
    if has_ref:
        note = ""
    elif report.get("success"):
        note = '<p class="muted">No drift reference yet: this data becomes the reference.</p>'
    else:  # failed data never becomes the reference (tasks/validation/drift_reference.py)
        note = '<p class="muted">No drift reference yet. This data failed, so it does not become the reference.</p>'
    return f"<h2>Dataset statistics (good {unit.rows})</h2>{note}<table>{head}{_rows(rows)}</table>"


def _span(values) -> str:
    """``32`` when every file has the same size, else ``24-512``."""
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def _composition(table) -> str:
    if table is None or table.empty:
        return ""
    parts = []
    for column, title in (("format", "format"), ("mode", "mode")):
        if column in table.columns:
            counts = table[column].fillna("unreadable").astype(str).value_counts()
            parts.append(f"<td><b>{title}</b><br>" + "<br>".join(f"<code>{escape(k)}</code> {v}" for k, v in counts.items()) + "</td>")
    if {"width", "height"} <= set(table.columns):
        w, h = table["width"].dropna(), table["height"].dropna()
        if len(w):
            sizes = (
                table.dropna(subset=["width", "height"])
                .apply(lambda r: f"{int(r['width'])}x{int(r['height'])}", axis=1)
                .value_counts()
                .head(5)
            )
            common = "<br>".join(f"<code>{escape(k)}</code> {v}" for k, v in sizes.items())
            parts.append(f"<td><b>size</b><br>width {_span(w)}, height {_span(h)}<br>{common}</td>")
    return f"<h2>What the files are</h2><table><tr>{''.join(parts)}</tr></table>" if parts else ""


def render(
    report: dict, table=None, *, unit: Unit, title: str | None = None, run_name: str | None = None, data_docs: str | None = None
) -> str:
    """The whole page for one validation ``report`` (as saved in ``<name>.json``) and its
    per-item ``table`` (a DataFrame of ``<name>_table.csv``, or None) of ``unit``'s rows."""
    ok = bool(report.get("success"))
    status = "pass" if ok else "fail"
    name = report.get("name", "data")
    faults = report.get("faults") or {}
    cards = [
        (f"{unit.name} checked", report.get("images", 0)),
        ("accepted", report.get("accepted", 0)),
        ("bad", sum(faults.values())),
        ("skipped", sum((report.get("skipped") or {}).values())),
        ("converted", sum((report.get("converted") or {}).values())),
    ]
    meta = [f"source <code>{escape(str(report.get('source', '')))}</code>", f"policy <code>{escape(str(report.get('policy', '')))}</code>"]
    if run_name:
        meta.append(f"run <code>{escape(run_name)}</code>")
    docs = data_docs or report.get("data_docs")
    docs_line = (
        f'<p class="muted">Great Expectations Data Docs: <code>{escape(str(docs))}</code> (they need a network for their styles).</p>'
        if docs
        else ""
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(
        [
            f'<h1>{escape(title or f"Data validation: {name}")}<span class="badge {status}">{"passed" if ok else "FAILED"}</span></h1>',
            f'<div class="meta">{" &middot; ".join(meta)}</div>',
            f'<div class="decision {status}">{escape(str(report.get("decision", "")))}</div>',
            '<div class="cards">' + "".join(f"<div class='card'><b>{v}</b><span>{escape(k)}</span></div>" for k, v in cards) + "</div>",
            _counts_table("Faults", faults, "fault", unit.faults, unit.rows),
            _bad_files(report, table, unit),
            _failures("Failed expectations", report.get("failures") or []),
            _failures(f"Failed expectations on the good {unit.rows} only", report.get("quarantine_failures") or []),
            _counts_table("Converted (accepted)", report.get("converted") or {}, "conversion"),
            _counts_table("Skipped (not validated, only counted)", report.get("skipped") or {}, "what"),
            _statistics(report, unit),
            _composition(table),
            docs_line,
            f"<footer>sslpipe validation report, generated {generated}. "
            "Self-contained: no scripts, nothing loaded from the network.</footer>",
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title or f"Data validation: {name}")}</title>'
        f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )
