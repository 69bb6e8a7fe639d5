"""Runs side by side in a notebook: an HTML table with word-level diffs, and a tidy DataFrame.

from nyxnb.notebook.compare import compare
view = compare([first.workflow_id, second.workflow_id], store=store)
view              # renders the HTML table in Jupyter
view.df           # one row per (step, run) for pandas work

The first run is the *baseline*, the others *revisions* (or the variants of an experiment). A
revision's output shows what changed against the baseline word by word (insertions green,
deletions struck out), next to the baseline's column. Scores have a row of their own, and a
step a revision took over unchanged says *reused from the baseline* instead of zero tokens.
The table is styled inline, so a host's table style (JupyterLab right-aligns cells) cannot
re-align it, and long words wrap whole.
"""

from __future__ import annotations

import difflib
import html
import re
from typing import Any

import pandas as pd

from nyxnb.notebook.progress import money, tokens_text
from nyxnb.reports import compare as engine_compare
from nyxnb.reports.compare import CompareRow, Comparison, RunCell
from nyxnb.store.database import Store

_CELL = "text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #ddd"
_STYLE = (
    "<style>.nyx-cmp{border-collapse:collapse;table-layout:auto}"
    f".nyx-cmp td,.nyx-cmp th{{{_CELL.replace(';', ' !important;')} !important}}"
    ".nyx-cmp pre{white-space:pre-wrap;word-break:normal;overflow-wrap:break-word;"
    "max-width:46em;margin:0;font-size:90%}"
    ".nyx-cmp .meta{color:#555;font-size:90%}.nyx-cmp .reused{color:#777;font-style:italic}"
    ".nyx-cmp ins{background:#dafbe1;color:#1a7f37;text-decoration:none}"
    ".nyx-cmp del{background:#ffebe9;color:#cf222e}</style>"
)
PREVIEW = 400  # characters of an output shown before "more"
_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff_html(old: str, new: str) -> str:
    """``new`` as HTML, its words inserted since ``old`` in ``<ins>``, the removed in ``<del>``."""
    a, b = _WORDS.findall(old or ""), _WORDS.findall(new or "")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(b[j1:j2])))
    return "".join(out)


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>{body}</details>"


def _td(body: str) -> str:
    return f'<td style="{_CELL}">{body}</td>'


def _meta(c: RunCell) -> str:
    status = f"<b>{html.escape(c.status)}</b>"
    if c.reused:
        return f'{status} · <span class="reused">↺ reused from the baseline (no call)</span>'
    who = html.escape(" ".join(x for x in (c.provider, c.model) if x) or "—")
    return (
        f"{status} · {who}<br><span class=meta>{tokens_text(c.input_tokens, c.output_tokens)} "
        f"tokens{f' ({c.reasoning_tokens:,} reasoning)' if c.reasoning_tokens else ''} · "
        f"{money(c.cost_usd)} · {c.latency_ms / 1000:.1f} s"
        + (f" · {c.violations} violations" if c.violations is not None else "")
        + "</span>"
    )


def _body(c: RunCell, base: RunCell | None) -> str:
    out = c.output or ""
    text = word_diff_html(base.output or "", out) if base and c.output_diff else html.escape(out)
    body = f"<pre>{text}</pre>"
    if len(out) > PREVIEW:  # the start, then the whole (with its changes marked) on a click
        body = _details(f"<pre>{html.escape(out[:PREVIEW])}…</pre>", body)
    if base is not None and c.prompt_diff:
        prompt = word_diff_html(base.prompt or "", c.prompt or "")
        body += _details("prompt changed", f"<pre>{prompt}</pre>")
    return body


def _cell_html(c: RunCell | None, base: RunCell | None) -> str:
    if c is None:
        return _td("<i>absent</i>")
    return _td(_meta(c) + _body(c, None if c is base else base))


def _roles(result: Comparison) -> list[str]:
    experiment = len({lbl.split("=")[0] for lbl in result.labels if "=" in lbl}) > 0
    kind = "variant" if experiment else "revision"
    return ["baseline", *(f"{kind} {i}" for i in range(1, len(result.labels)))]


def _scores_row(result: Comparison) -> str:
    per_run: list[list[str]] = [[] for _ in result.labels]
    for row in result.rows:
        for i, c in enumerate(row.cells):
            if c is not None and c.score is not None:
                per_run[i].append(f"{row.step} <b>{c.score:g}</b>")
    if not any(per_run):
        return ""
    cells = "".join(_td("<br>".join(s) or "—") for s in per_run)
    return f"<tr>{_td('<b>score</b>')}{cells}</tr>"


def _row_html(row: CompareRow) -> str:
    base = row.cells[0]
    mark = " ✱ changed" if row.changed else ""
    first = _td(f"<b>{html.escape(row.step)}</b><br><small>{row.type}{mark}</small>")
    return "<tr>" + first + "".join(_cell_html(c, base) for c in row.cells) + "</tr>"


def to_html(result: Comparison) -> str:
    """The comparison as an HTML table: a row per step, a column per run, scores on top."""
    head = "".join(
        f'<th style="{_CELL}">{role}<br><small>{html.escape(lbl)}'
        + ("" if wid[:8] in lbl else f" · {wid[:8]}")
        + "</small></th>"
        for role, lbl, wid in zip(_roles(result), result.labels, result.workflow_ids, strict=True)
    )
    rows = _scores_row(result) + "".join(_row_html(r) for r in result.rows)
    return (
        f'{_STYLE}<table class="nyx-cmp"><thead><tr><th style="{_CELL}">step</th>{head}</tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def tidy(result: Comparison) -> pd.DataFrame:
    """One row per (step, run): short ids, numbers with their unit in the name, one NA."""
    roles = dict(zip(result.workflow_ids, _roles(result), strict=True))
    rows = [
        {
            "step": r.step,
            "run": c.label,
            "role": roles[c.workflow_id],
            "workflow": c.workflow_id[:8],
            "status": c.status,
            "reused": c.reused,
            "provider": c.provider,
            "model": c.model,
            "calls": c.calls,
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "cost_usd": round(c.cost_usd, 6),
            "latency_s": round(c.latency_ms / 1000, 2),
            "score": c.score,
            "violations": c.violations,
            "prompt_changed": bool(c.prompt_diff),
            "output_changed": bool(c.output_diff),
            "output": c.output,
        }
        for r in result.rows
        for c in r.cells
        if c is not None
    ]
    nullable = {"score": "Float64", "violations": "Int64", "provider": "string", "model": "string",
                "output": "string"}  # fmt: skip
    return pd.DataFrame(rows).astype(nullable).convert_dtypes()  # NaN and None alike: <NA>


class CompareView:
    """A comparison that renders as HTML in Jupyter and as text elsewhere."""

    def __init__(self, result: Comparison) -> None:
        self.result = result

    @property
    def df(self) -> pd.DataFrame:
        """The tidy table: one row per (step, run); :attr:`ids` maps ``run`` to workflow ids."""
        return tidy(self.result)

    @property
    def ids(self) -> dict[str, str]:
        """The full workflow id of each run, by its label (the ``run`` column)."""
        return dict(zip(self.result.labels, self.result.workflow_ids, strict=True))

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
