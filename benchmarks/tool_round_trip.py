"""Tool round trip: what the LLM base adds between a model's tool call and the follow-up request.

A scripted engine (no network, no model) answers each turn with one ``ToolCall`` and, when asked
again, with one word. Timed per turn: from the moment the engine yields the call to the moment
``stream_reply`` is entered for the follow-up — the framework's share of a tool round trip (the
``LLMToolCallFrame``, the call and result into the history, the tool task, the new request), with a
trivial tool: an async one, and a sync one that pays the hop to a worker thread.

Run from the repo root: ``python benchmarks/tool_round_trip.py`` (a few seconds); one JSON line per
tool kind on stdout: median, p95 and max in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from pipeline.frames import TranscriptFrame
from pipeline.testing import run_processor
from processors.llm.base import ChatLLM
from processors.llm.tools import ToolCall, ToolSet, tool_from_function


async def ping_async() -> str:
    """Answer at once."""
    return "pong"


def ping_sync() -> str:
    """Answer at once, from a thread."""
    return "pong"


class TimedLLM(ChatLLM):
    """Calls the tool on each user turn; times the gap until it is asked again."""

    def setup(self) -> None:
        self.tool_name = ""
        self.yielded_at = 0
        self.gaps_ns: list[int] = []

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        if messages[-1]["role"] == "tool":
            self.gaps_ns.append(time.perf_counter_ns() - self.yielded_at)
            yield "Done."
            return
        self.yielded_at = time.perf_counter_ns()
        yield ToolCall(call_id=f"c{len(self.gaps_ns)}", name=self.tool_name, arguments="{}")


async def measure(tool: Any, turns: int) -> dict[str, Any]:
    llm = TimedLLM(name="llm", filler_after=None)
    llm.toolset = ToolSet([tool_from_function(tool)])
    llm.tool_name = tool.__name__
    out = await run_processor(llm, [TranscriptFrame(text=f"turn {n}") for n in range(turns)], timeout=120)
    assert not out.errors, out.errors
    gaps = sorted(gap / 1000 for gap in llm.gaps_ns[turns // 10 :])  # the first tenth warms up
    return {
        "benchmark": "tool_round_trip",
        "tool": tool.__name__,
        "turns": len(gaps),
        "median_us": round(statistics.median(gaps), 1),
        "p95_us": round(gaps[int(len(gaps) * 0.95) - 1], 1),
        "max_us": round(gaps[-1], 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    args = parser.parse_args()
    for tool in (ping_async, ping_sync):
        print(json.dumps(asyncio.run(measure(tool, args.turns))))


if __name__ == "__main__":
    main()
