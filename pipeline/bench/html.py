"""The benchmark's self-contained HTML report: the stage table and a per-turn waterfall chart.

Everything is inline (CSS and SVG, no scripts, fonts or images fetched), so the file can be mailed,
archived or opened offline and looks the same everywhere.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from pipeline.bench.report import LABELS, Results
from pipeline.bench.timeline import STAGES

__all__ = ["render"]

COLOURS = {
    "vad_hangover": "#8e9aaf",
    "stt": "#4e79a7",
    "llm_first_token": "#f28e2b",
    "tts_first_audio": "#59a14f",
    "playout": "#b07aa1",
}
ROW, LABEL_WIDTH, CHART_WIDTH = 26, 70, 760

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:900px}
table{border-collapse:collapse;margin:1em 0}
th,td{padding:.25em .8em;text-align:right;border-bottom:1px solid #ddd}
th:first-child,td:first-child{text-align:left}.warn{color:#a40;font-weight:600}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px}svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def render(results: Results) -> str:
    """The whole report as one HTML document."""
    doc = results.document()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Voxgraph bench: {escape(doc['config'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Voice-to-voice latency: {escape(doc['config'])}</h1>",
        f"<p>{doc['answered']} of {doc['turns']} turns answered; {doc['barge_ins_measured']} of "
        f"{doc['barge_ins_tried']} barge-ins measured. Times run from the end of the user's speech.</p>",
        _machine(doc["machine"]),
        _first_turn(doc),
        _stage_table(doc["stages"]),
        "<h2>Per turn</h2>",
        _legend(),
        _waterfall(doc["per_turn"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _first_turn(doc: dict[str, Any]) -> str:
    """The first turn against the later ones: a cold engine shows here."""
    later = doc.get("later_turns_voice_to_voice")
    if doc.get("first_turn_voice_to_voice_ms") is None or not later:
        return ""
    return (
        f"<p>First turn: {doc['first_turn_voice_to_voice_ms']:.0f} ms voice to voice; "
        f"later turns p50 {later['p50_ms']:.0f} ms.</p>"
    )


def _machine(machine: dict[str, Any]) -> str:
    load = machine["load_before"][0], machine["load_after"][0]
    text = (
        f"<p>Machine: {machine['cpus']} CPUs, load average {load[0]:.2f} → {load[1]:.2f}, "
        f"CPU steal {machine['steal']:.1%}, other processes {machine['others']:.0%}.</p>"
    )
    warnings = "".join(f'<p class="warn">Warning: {escape(w)}.</p>' for w in machine["warnings"])
    return text + warnings


def _stage_table(stages: dict[str, dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{LABELS[name]}</td><td>{s['count']}</td><td>{s['p50_ms']}</td>"
        f"<td>{s['p95_ms']}</td><td>{s['max_ms']}</td></tr>"
        for name, s in stages.items()
    )
    head = "<tr><th>stage</th><th>n</th><th>p50 ms</th><th>p95 ms</th><th>max ms</th></tr>"
    return f'<table id="stages">{head}{rows}</table>'


def _legend() -> str:
    items = "".join(f'<span><i style="background:{COLOURS[s]}"></i>{LABELS[s]}</span>' for s in STAGES[:-1])
    return f'<p class="legend">{items}</p>'


def _waterfall(turns: list[dict[str, Any]]) -> str:
    """One row per turn: its stages laid end to end from the end of speech; unanswered turns say so."""
    longest = max((t.get("voice_to_voice_ms", 0.0) for t in turns), default=0.0)
    span = max(100.0, math.ceil(longest / 100) * 100)
    scale = CHART_WIDTH / span
    height = ROW * (len(turns) + 1) + 10
    width = LABEL_WIDTH + CHART_WIDTH + 60
    out = [f'<svg id="waterfall" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    step = _tick_step(span)
    for tick in range(0, int(span) + 1, step):
        x = LABEL_WIDTH + tick * scale
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 16}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle">{tick} ms</text>')
    for row, turn in enumerate(turns):
        y = row * ROW + 4
        out.append(f'<text x="0" y="{y + 15}">turn {turn["turn"]}</text>')
        if not turn["answered"]:
            out.append(f'<text x="{LABEL_WIDTH}" y="{y + 15}" fill="#a40">not answered</text>')
            continue
        x = float(LABEL_WIDTH)
        for stage in STAGES[:-1]:
            ms = turn[f"{stage}_ms"]
            tip = escape(f"turn {turn['turn']}: {LABELS[stage]} {ms} ms — {turn['text']}")
            out.append(
                f'<rect class="stage {stage}" x="{x:.1f}" y="{y}" width="{max(ms * scale, 0.5):.1f}" '
                f'height="{ROW - 8}" fill="{COLOURS[stage]}"><title>{tip}</title></rect>'
            )
            x += ms * scale
        out.append(f'<text x="{x + 4:.1f}" y="{y + 15}">{turn["voice_to_voice_ms"]:.0f} ms</text>')
    out.append("</svg>")
    return "".join(out)


def _tick_step(span: float) -> int:
    for step in (100, 200, 250, 500, 1000, 2000, 5000):
        if span / step <= 10:
            return step
    return 10000
