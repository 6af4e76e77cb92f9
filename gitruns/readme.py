"""The README.md of a run's tree: the run for people browsing its branch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gitruns.summary import visible


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> list[str]:
    if not rows:
        return ["_none_", ""]
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(rows.items())]
    return lines + [""]


def render_readme(
    info: Mapping[str, Any], config: Mapping[str, Any], summary: Mapping[str, Any]
) -> str:
    """Markdown naming the run, its state, lineage, config and summary.

    Args:
        info: the run's run.json, as :func:`gitruns.store.check_run_json`
            accepts it.
        config: the run's config.
        summary: the run's summary; metrics marked ``hidden`` are left out.

    Returns:
        The text of the run's README.md.
    """
    path = f"{info.get('project')}/{info.get('id')}"
    lines = [f"# {info.get('name') or info.get('id')}", ""]
    lines.append(f"gitruns run `{path}`, state **{info.get('state')}**, ")
    last = info.get("last_step")
    lines[-1] += "no steps yet." if last is None else f"steps 0..{last}."
    lines.append("")
    fork = info.get("fork_from")
    if fork:
        lines.append(
            f"Forked from `{fork['run']}` at step {fork['step']} "
            f"(commit `{str(fork['commit'])[:10]}`)."
        )
        lines.append("")
    for rewind in info.get("rewinds") or []:
        lines.append(
            f"Rewound to step {rewind['step']} (history before it: "
            f"commit `{str(rewind['commit'])[:10]}`)."
        )
    if info.get("rewinds"):
        lines.append("")
    code = info.get("code")
    if code:
        dirty = " with uncommitted changes (code.patch)" if code.get("dirty") else ""
        lines += [
            f"Started from code commit `{code.get('commit')}` on "
            f"`{code.get('branch')}`{dirty}.",
            "",
        ]
    lines += ["## Config", ""] + _table(config, ("key", "value"))
    shown = visible(summary, info.get("metrics") or {})
    lines += ["## Summary", ""] + _table(shown, ("metric", "value"))
    lines += [
        "Metrics are in `history/` (msgpack chunks); read them with "
        f"`gitruns history {path}`.",
        "",
    ]
    return "\n".join(lines)
