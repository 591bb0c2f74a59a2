"""``python -m pipeline bench CONFIG``: voice-to-voice latency of any conversation graph, stage by stage.

The graph's input transport is replaced by real-time playback of speech files (by default real human
speech from Debian's pocketsphinx-testdata) and its output by a real-time speaker, then it runs
``--turns`` turns and ``--barge-ins`` barge-ins. Each turn is timed from the end of the user's speech
to the bot's audio playing, split into VAD hangover, STT final, LLM first token, TTS first audio and
playout; a barge-in from the start of the user's speech to the bot falling silent. The results go
out as a table (stdout), JSON and a self-contained HTML report with a per-turn waterfall; progress
goes to stderr. Load average, CPU steal and other processes' CPU are recorded, with a warning when
the machine was not quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pipeline.bench.html import render
from pipeline.bench.report import Results, table
from pipeline.bench.rewire import BenchGraphError
from pipeline.bench.run import DEFAULT_SPEECH, BenchPlan, measure
from pipeline.errors import ValidationError

__all__ = ["DEFAULT_SPEECH", "BenchPlan", "Results", "add_arguments", "command", "measure", "write_reports"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's own options (the config and ``--set`` are added with the others')."""
    parser.add_argument("--turns", type=int, default=10, metavar="N", help="turns in the latency run (10)")
    parser.add_argument("--barge-ins", type=int, default=5, metavar="M", help="barge-ins in a second run (5)")
    parser.add_argument(
        "--speech",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="the user's turns (audio files, said in turn and repeated as needed); "
        "default: real speech from pocketsphinx-testdata",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="JSON report (default bench-NAME.json)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="HTML report (default bench-NAME.html)")


def command(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; the exit code (0 ok, 1 it failed, 2 bad input)."""
    speech = list(args.speech or DEFAULT_SPEECH)
    missing = [s for s in speech if not s.is_file()]
    if missing:
        fix = "run ./setup.sh (it installs pocketsphinx-testdata)" if not args.speech else "check the path"
        print(f"error: no speech file {missing[0]}: {fix}", file=sys.stderr)
        return EXIT_INVALID
    if args.turns < 0 or args.barge_ins < 0 or not (args.turns or args.barge_ins):
        print("error: --turns and --barge-ins must be >= 0, and one of them > 0", file=sys.stderr)
        return EXIT_INVALID
    plan = BenchPlan(Path(args.config), args.overrides, args.turns, args.barge_ins, speech)
    try:
        results = asyncio.run(measure(plan))
    except BenchGraphError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except ValidationError as error:
        print(f"{len(error.problems)} problem(s) found:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    name = Path(args.config).stem
    json_path, html_path = write_reports(
        results, args.json or Path(f"bench-{name}.json"), args.html or Path(f"bench-{name}.html")
    )
    print(table(results))
    print(f"[bench] wrote {json_path} and {html_path}", file=sys.stderr)
    return EXIT_OK if results.answered() or results.barge_ins else EXIT_FAILED


def write_reports(results: Results, json_path: Path, html_path: Path) -> tuple[Path, Path]:
    """Save the JSON and HTML reports; returns their paths."""
    json_path.write_text(json.dumps(results.document(), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render(results), encoding="utf-8")
    return json_path, html_path
