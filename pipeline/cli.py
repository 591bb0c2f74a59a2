"""``python -m pipeline``: run, validate, draw and list graphs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import bench, bundled, config, logs, negotiate, render, runner
from pipeline.errors import Problem, UnknownTypeError, ValidationError
from pipeline.formats import ANY_AUDIO
from pipeline.params import param_specs
from pipeline.processor import Processor, Source
from pipeline.registry import available, import_plugins, resolve

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

EPILOG = """examples:
  python -m pipeline run configs/assistant.yaml        # the offline assistant on http://127.0.0.1:8000
  python -m pipeline run configs/assistant-file.yaml --set 'caller.paths=[question.wav]'
  python -m pipeline run configs/hello.yaml
  python -m pipeline run configs/hello.yaml --set tone.frequency=880 --metrics latency.json
  python -m pipeline validate configs/hello.yaml
  python -m pipeline graph configs/hello.yaml > graph.mmd
  python -m pipeline list audio.resample
  python -m pipeline run assistant                     # a shipped config by name (no checkout needed)
  python -m pipeline init                              # copy the shipped configs into ./configs
  python -m pipeline bench configs/assistant.yaml --turns 10 --barge-ins 5   # latency report
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 the graph failed, 2 invalid config)."""
    args = _parser().parse_args(argv)
    logs.configure(args.verbose)
    failures = import_plugins(getattr(args, "imports", []))
    for module, reason in failures.items():
        print(
            f"error: --import {module}: {reason}; check the module is in this folder or installed",
            file=sys.stderr,
        )
    if failures:
        return EXIT_INVALID
    handler: Any = args.handler
    return int(handler(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Voxgraph: real-time voice pipelines declared as YAML graphs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help=(
            "run a graph until it ends (Ctrl-C stops it cleanly), or serve it if it has a server: "
            "section (Ctrl-C or SIGTERM drains: live conversations go on up to drain_timeout)"
        ),
    )
    _add_config_args(run)
    run.add_argument(
        "--metrics", type=Path, metavar="FILE", help="save a per-processor latency summary as JSON"
    )
    run.add_argument("--summary", action="store_true", help="print the latency summary when the run ends")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a config and print every problem (exit 2 if any)")
    _add_config_args(validate)
    validate.set_defaults(handler=_validate)

    graph = commands.add_parser("graph", help="print the graph as Mermaid (default) or Graphviz DOT")
    _add_config_args(graph)
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.set_defaults(handler=_graph)

    listing = commands.add_parser("list", help="list node types with their params, defaults and formats")
    listing.add_argument("types", nargs="*", metavar="TYPE", help="only these types")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _add_imports(listing)
    _add_verbose(listing)
    listing.set_defaults(handler=_list)

    bench_command = commands.add_parser(
        "bench", help="voice-to-voice latency of a conversation graph on real speech, stage by stage"
    )
    _add_config_args(bench_command)
    bench.add_arguments(bench_command)
    bench_command.set_defaults(handler=bench.command)

    init = commands.add_parser(
        "init", help="copy the shipped configs into ./configs (existing files are kept), to edit and run"
    )
    init.add_argument("directory", nargs="?", type=Path, default=Path("."), help="where (default: here)")
    init.set_defaults(handler=_init)
    return parser


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    _add_verbose(parser)
    _add_imports(parser)
    parser.add_argument(
        "config",
        type=bundled.find_config,
        help="the graph's YAML file, or the name of a shipped config: "
        + ", ".join(bundled.bundled_configs()),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a param (repeatable); VALUE is read as YAML, e.g. --set vad.aggressiveness=3",
    )


def _add_imports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers node types with @pipeline.register (repeatable)",
    )


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    # Also accepted after the command ("run x.yaml -v"); counts add to any given before it.
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logs")


def _run(args: argparse.Namespace) -> int:
    compiled, problems = config.compile_config(args.config, args.overrides)
    if compiled is None or problems:
        _print_problems(problems)
        return EXIT_INVALID
    if compiled.server is not None:
        if args.metrics or args.summary:
            print(
                "error: --metrics and --summary measure one graph; a served config runs one per connection",
                file=sys.stderr,
            )
            return EXIT_INVALID
        serve = config.server_entry(compiled.server.type)
        return asyncio.run(serve(compiled))
    graph = compiled.graph()
    if args.metrics and not args.metrics.parent.is_dir():
        print(f"error: --metrics {args.metrics}: no directory {args.metrics.parent}", file=sys.stderr)
        return EXIT_INVALID
    measure = bool(args.metrics or args.summary)
    report = asyncio.run(runner.run(graph, measure=measure))
    if args.metrics:
        runner.save(report, args.metrics)
    if args.summary:
        print(runner.format_summary(report), file=sys.stderr)
    return EXIT_FAILED if report.outcome == "failed" else EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    problems = config.check(args.config, args.overrides)
    if problems:
        _print_problems(problems)
        return EXIT_INVALID
    print(f"{args.config}: valid")
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    graph = _load(args)
    if graph is None:
        return EXIT_INVALID
    labels = negotiate.edge_formats(graph.processors, graph.edges)
    draw = render.dot if args.format == "dot" else render.mermaid
    sys.stdout.write(draw(graph, labels))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    names = available()
    wanted = args.types or list(names)
    entries = []
    for name in wanted:
        try:
            entries.append(describe(name, resolve(name)))
        except UnknownTypeError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
        except ImportError as error:  # an optional extra is not installed
            entries.append({"type": name, "source": names.get(name, name), "unavailable": str(error)})
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
    else:
        print("\n\n".join(_format_entry(e) for e in entries))
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    if not bundled.bundled_configs():
        print(f"error: no shipped configs found in {bundled.BUNDLED}", file=sys.stderr)
        return EXIT_FAILED
    written, kept = bundled.init(args.directory)
    for path in written:
        print(f"wrote {path}")
    if kept:
        print(f"kept {len(kept)} existing file(s) unchanged", file=sys.stderr)
    print(f"run one: python -m pipeline run {args.directory / 'configs' / 'assistant.yaml'}")
    return EXIT_OK


def describe(name: str, cls: type[Processor]) -> dict[str, Any]:
    """What ``list`` shows about one type."""
    entry: dict[str, Any] = {
        "type": name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "summary": (cls.__doc__ or "").strip().split("\n")[0].replace("``", ""),
        "role": "source" if issubclass(cls, Source) else "processor",
        "handles": [f.kind for f in cls.handles],
        "produces": [f.kind for f in cls.produces],
        "params": [
            {
                "name": s.name,
                "type": s.type_name,
                "required": s.required,
                "default": None if s.secret else s.default,
                "doc": s.doc,
                "limits": s.limits,
            }
            for s in param_specs(cls.Params)
        ],
    }
    if cls.accepts_audio is not ANY_AUDIO:
        entry["accepts_audio"] = str(cls.accepts_audio)
    return entry


def _format_entry(entry: dict[str, Any]) -> str:
    if "unavailable" in entry:
        return f"{entry['type']}  (not installed: {entry['unavailable']})"
    lines = [f"{entry['type']}  [{entry['role']}]  {entry['summary']}"]
    flow = []
    if entry["handles"]:
        flow.append("handles " + ", ".join(entry["handles"]))
    if entry["produces"]:
        flow.append("produces " + ", ".join(entry["produces"]))
    if "accepts_audio" in entry:
        flow.append("audio in: " + entry["accepts_audio"])
    if flow:
        lines.append("    " + "; ".join(flow))
    for p in entry["params"]:
        default = "required" if p["required"] else f"default {p['default']!r}"
        if p["limits"]:
            default += f"; {p['limits']}"
        doc = f" — {p['doc']}" if p["doc"] else ""
        lines.append(f"    {p['name']}: {p['type']} ({default}){doc}")
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> Any:
    try:
        return config.load(args.config, args.overrides)
    except ValidationError as error:
        _print_problems(error.problems)
        return None


def _print_problems(problems: list[Problem]) -> None:
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} found:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
