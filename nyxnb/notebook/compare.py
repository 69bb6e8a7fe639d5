"""Runs side by side in a notebook: an HTML table with collapsible diffs, and a DataFrame.

from nyxnb.notebook.compare import compare
view = compare([first.workflow_id, second.workflow_id], store=store)
view              # renders the HTML table in Jupyter
view.df           # one row per (step, run) for pandas work
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from nyxnb.reports import compare as engine_compare
from nyxnb.reports.compare import Comparison, RunCell
from nyxnb.store.database import Store

_STYLE = (
    "<style>.nyx-cmp td,.nyx-cmp th{vertical-align:top;text-align:left;padding:4px 8px;"
    "border-bottom:1px solid #ddd}.nyx-cmp pre{white-space:pre-wrap;max-width:48em;margin:0}"
    ".nyx-cmp .reused{color:#777}.nyx-cmp .add{color:#1a7f37}.nyx-cmp .del{color:#cf222e}</style>"
)
PREVIEW = 400  # characters of an output shown before "more"


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        cls = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
        lines.append(f'<span class="{cls}">{html.escape(line)}</span>')
    return "<pre>" + "\n".join(lines) + "</pre>"


def _details(summary: str, body: str, *, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def _cell_html(c: RunCell | None) -> str:
    if c is None:
        return "<td><i>absent</i></td>"
    out = c.output or ""
    meta = (
        f"<b>{html.escape(c.status)}</b>{' <span class=reused>(reused)</span>' if c.reused else ''}"
        f" · {html.escape(c.provider or '')} {html.escape(c.model or '')}<br>"
        f"{c.input_tokens}/{c.output_tokens} tok"
        + (f" ({c.reasoning_tokens} reasoning)" if c.reasoning_tokens else "")
        + f" · ${c.cost_usd:.4f} · {c.latency_ms:.0f} ms"
    )
    if c.score is not None:
        meta += f" · score <b>{c.score:g}</b>"
    if c.violations is not None:
        meta += f" · {c.violations} violations"
    body = f"<pre>{html.escape(out[:PREVIEW])}</pre>"
    if len(out) > PREVIEW:
        body = _details(
            f"<pre>{html.escape(out[:PREVIEW])}…</pre>", f"<pre>{html.escape(out)}</pre>"
        )
    if c.prompt_diff:
        body += _details("prompt diff", _diff_html(c.prompt_diff))
    if c.output_diff:
        body += _details("output diff", _diff_html(c.output_diff))
    return f"<td>{meta}{body}</td>"


def to_html(result: Comparison) -> str:
    """The comparison as an HTML table: a row per step, a column per run."""
    head = "".join(f"<th>{html.escape(lbl)}</th>" for lbl in result.labels)
    rows = []
    for row in result.rows:
        mark = " ✱" if row.changed else ""
        first = f"<td><b>{html.escape(row.step)}</b>{mark}<br><small>{row.type}</small></td>"
        rows.append("<tr>" + first + "".join(_cell_html(c) for c in row.cells) + "</tr>")
    return (
        f'{_STYLE}<table class="nyx-cmp"><tr><th>step</th>{head}</tr>' + "".join(rows) + "</table>"
    )


class CompareView:
    """A comparison that renders as HTML in Jupyter and as text elsewhere."""

    def __init__(self, result: Comparison) -> None:
        self.result = result

    @property
    def df(self) -> pd.DataFrame:
        """One row per (step, run): prompt, output, diffs, provider, tokens, cost, scores."""
        return pd.DataFrame.from_records(self.result.records())

    def _repr_html_(self) -> str:
        return to_html(self.result)

    def __repr__(self) -> str:
        changed = [r.step for r in self.result.rows if r.changed]
        return (
            f"<compare {len(self.result.workflow_ids)} runs: {', '.join(self.result.labels)}; "
            f"changed steps: {', '.join(changed) or 'none'}>"
        )


def compare(
    ids: list[str] | tuple[str, ...] | str, *, store: Store | str | None = None, **kw: Any
) -> CompareView:
    """Compare runs (workflow ids or an experiment id) for display in a notebook."""
    return CompareView(engine_compare.compare(ids, store=store, **kw))
