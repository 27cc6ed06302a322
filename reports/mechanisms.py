"""The mechanism summary (``circuits.mechanisms.MechanismSummary``) as a section of the HTML
report: per target its exact parts (tokens, constants, errors), the predicting head group and
the top group-level paths; per group its flow, where its heads attend and why (the QK reason
with both sides' always-on parts named), its concept label, and the ablation checks (the
graph's prediction beside the effect measured with attention frozen and free, flagged rows
marked). Rendered from the record's fields only; every string goes through ``escape``.
"""

from __future__ import annotations

from circuits.mechanisms import (
    RATIO,
    GroupRecord,
    MechanismSummary,
    NodeRef,
    QKReasonRecord,
    ref_text,
    root_text,
)

CSS = """
.mech td, .mech th { font-size: 0.9em; }
.mech .flagged { background: #fde0dd; }
.mech .path { font-family: Menlo, Consolas, monospace; font-size: 0.85em; }
.mech ul { margin: 2px 0 2px 1.2em; padding: 0; }
"""


def _esc(text: str) -> str:
    from .html import escape

    return escape(text)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3g}"


def _cls(x: float | None) -> str:
    return "" if x is None else ("pos" if x > 0 else "neg")


def _span(x: float | None) -> str:
    return f'<span class="{_cls(x)}">{_num(x)}</span>'


def _ref(ref: NodeRef | None, drawn: set[str]) -> str:
    text = _esc(ref_text(ref))
    if ref is not None and ref.id is not None and ref.id in drawn:
        return f'<a href="#node-{_esc(ref.id)}">{text}</a>'
    return text


def _reason_html(r: QKReasonRecord, drawn: set[str]) -> str:
    always = r.mean_query_mean_key + r.query_vs_mean_key + r.mean_query_vs_key
    pairs = "".join(
        f"<li>{_ref(p.query, drawn)} &times; {_ref(p.key, drawn)}: {_span(p.value)}</li>"
        for p in r.pairs
    )
    sources = ""
    for name, side in (("query", r.query_sources), ("key", r.key_sources)):
        items = [
            f"{_esc(x.name)} {_span(x.value)}"
            for c in ("roots", "heads", "features")
            for x in side.get(c, [])[:2]
        ]
        if items:
            sources += f"<div>what the {name} holds (against the other side's deviation), "
            sources += "from, through the graph: "
            sources += "; ".join(items) + "</div>"
    roots = f"<div>{_esc(root_text(r, 3))}</div>" if r.root_pairs else ""
    return (
        f"<div>QK {r.qk_head} reads {_esc(repr(r.key_token))}@{r.key} (attention "
        f"{r.attention:.2f}): score {_span(r.score)} = always-on {_span(always)} (mean query "
        f"&times; mean key {_span(r.mean_query_mean_key)}, this query &times; mean key "
        f"{_span(r.query_vs_mean_key)}, mean query &times; this key "
        f"{_span(r.mean_query_vs_key)}) + specific {_span(r.specific)}</div>{roots}"
        f"<div>specific by units at the two positions (the pairs below leave out "
        f"{r.rest_share:.0%} of the magnitude):</div><ul>{pairs}</ul>{sources}"
    )


def _checks_html(g: GroupRecord, target_names: dict[str, str]) -> str:
    rows = []
    for c in g.checks:
        cls = ' class="flagged"' if c.flagged else ""
        rows.append(
            f"<tr{cls}><td>{_esc(target_names.get(c.target, c.target))}</td>"
            f'<td class="num">{_num(c.predicted)}</td><td class="num">{_num(c.frozen)}</td>'
            f'<td class="num">{_num(c.free)}</td>'
            f"<td>{'flagged' if c.flagged else 'ok'}</td></tr>"
        )
    if not rows:
        return ""
    head = ("<tr><th>target</th><th>predicted</th><th>frozen attention</th>"
            "<th>free attention</th><th></th></tr>")  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>"


def mechanisms_html(summary: MechanismSummary, drawn_ids: set[str] | None = None) -> str:
    """The section's HTML; ``drawn_ids``: the node ids that have a row in the node table."""
    drawn = drawn_ids or set()
    names = {g.key: g.name for g in summary.groups}
    target_names = {t.node: t.label for t in summary.targets}
    parts = [
        '<div class="mech">',
        "<p>Groups are heads (same block, query position and key) and features (same block, "
        "position and concept) read as one; a <em>flow</em> is a group's exact total linear "
        "contribution to the target through every path. Checks ablate a group and compare the "
        "graph's prediction with the model rerun, attention frozen and free: flagged rows "
        f"(sign differs, or more than {RATIO:g}x off) are where the linear graph is not to be "
        "trusted.</p>",
    ]
    for t in summary.targets:
        consts = ", ".join(f"{_esc(name)} {_span(v)}" for name, v in t.constants_by_source)
        runner = ""
        if t.runner_up is not None:
            runner = (f"; runner-up {_esc(repr(t.runner_up))} (p={t.runner_up_probability:.3f})"
                      f", margin {_span(t.margin)}")  # fmt: skip
        parts.append(
            f"<h3>Target {_esc(target_names[t.node])} = {t.value:.4g} "
            + (f"(p={t.probability:.3f})" if t.probability is not None else "(pre-activation)")
            + f"{runner}</h3>"
            f"<p>parts: tokens {_span(t.tokens)}, constants {_span(t.constants)} ({consts}), "
            f"errors {_span(t.errors)}</p>"
        )
        if t.predicting_group:
            parts.append(f"<p>predicting heads: <b>{_esc(t.predicting_group)}</b> "
                         f"{_esc(names[t.predicting_group])}</p>")  # fmt: skip
        paths = [p for p in summary.paths if p.target == t.node]
        if paths:
            items = "".join(
                f'<li class="path">{_span(p.flow)} '
                + " &rarr; ".join(f"{_esc(k)} {_esc(names[k])}" for k in p.groups)
                + "</li>"
                for p in paths
            )
            parts.append(f"<p>top paths, token to target:</p><ul>{items}</ul>")
    rows = []
    for g in summary.groups:
        if g.kind in ("embedding", "error", "bias"):
            continue
        flows = "<br>".join(f"{_esc(target_names.get(k, k))}: {_span(v)}"
                            for k, v in g.flow.items())  # fmt: skip
        what = []
        if g.concept:
            what.append(f"concept: {_esc(g.concept)}")
        if g.promotes:
            what.append("promotes " + ", ".join(_esc(repr(x)) for x in g.promotes))
        what += [_reason_html(r, drawn) for r in g.qk]
        members = ", ".join(
            f'<a href="#node-{_esc(m)}">{_esc(m)}</a>' if m in drawn else _esc(m)
            for m in g.members[:12]
        ) + (" …" if len(g.members) > 12 else "")
        rows.append(
            f"<tr><td><b>{_esc(g.key)}</b></td><td>{_esc(g.name)}<br><small>{members}</small>"
            f"</td><td>{flows}</td><td>{'<br>'.join(what)}</td>"
            f"<td>{_checks_html(g, target_names)}</td></tr>"
        )
    if rows:
        parts.append(
            "<table><tr><th>group</th><th>members</th><th>flow</th><th>what it does</th>"
            "<th>ablation: predicted vs measured</th></tr>" + "".join(rows) + "</table>"
        )
    parts.append("</div>")
    return "\n".join(parts)
