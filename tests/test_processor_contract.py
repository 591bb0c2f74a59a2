"""What a user meets writing a processor: typed params, per-instance state without ``__init__``,
engine bases that cannot be broken by a forgotten ``super()``, and a namespace of their own."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import pytest

from pipeline import Processor, param, runner
from pipeline.config import check_text, load_text
from pipeline.frames import Frame, TextFrame
from pipeline.processor import timings_of
from pipeline.testing import run_processor
from processors.tts.base import SpeechSynthesizer


@dataclass
class CounterParams:
    start: int = param(0, doc="first number")


class Counter(Processor[CounterParams]):
    """Numbers each text: state that lives as long as the node, set up without ``__init__``."""

    handles: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)
    produces: ClassVar[tuple[type[Frame], ...]] = (TextFrame,)

    def setup(self) -> None:
        self.count = self.params.start

    async def process(self, frame: TextFrame) -> None:
        self.count += 1
        await self.push(TextFrame(f"{self.count}. {frame.text}"))


class WithOwnMetrics(Counter):
    """Uses the name ``metrics`` for something of its own."""

    def setup(self) -> None:
        super().setup()
        self.metrics = {"texts": 0}


class OldStyleInit(Processor):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)


def test_the_params_class_comes_from_the_generic_argument() -> None:
    assert Counter.Params is CounterParams
    assert Counter(start=5).params == CounterParams(start=5)


async def test_setup_gives_each_instance_its_own_state() -> None:
    first, second = Counter(start=10), Counter()
    out = await run_processor(first, [TextFrame("a"), TextFrame("b")])
    out.raise_errors()
    assert out.texts == ["11. a", "12. b"]
    assert second.count == 0


async def test_a_stateful_processor_runs_from_yaml() -> None:
    graph = load_text(
        """
nodes:
  say: {type: source.text, texts: [hi, there]}
  count: {type: "tests.test_processor_contract:Counter", start: 100}
  out: {type: debug.null}
edges: [say -> count -> out]
"""
    )
    await asyncio.wait_for(graph.run(), 10)
    assert graph.processors["count"].count == 102  # type: ignore[attr-defined]


def test_an_init_that_takes_no_params_gets_a_fix_that_says_setup() -> None:
    problems = check_text(
        """
nodes:
  say: {type: source.text, texts: [hi]}
  old: {type: "tests.test_processor_contract:OldStyleInit"}
edges: [say -> old]
""",
        "old.yaml",
    )
    assert len(problems) == 1
    assert problems[0].fix == "drop OldStyleInit.__init__; set up per-instance state in setup() (no super())"


def test_an_engine_base_refuses_a_subclass_that_overrides_a_hook_it_needs() -> None:
    with pytest.raises(TypeError, match=r"overrides on_stop\(\), which SpeechSynthesizer runs for itself; "):

        class Forgetful(SpeechSynthesizer):
            async def on_stop(self) -> None:  # would skip speaking the rest of the reply
                pass


async def test_a_subclass_may_use_the_name_metrics_and_the_run_still_reports() -> None:
    graph = load_text(
        """
nodes:
  say: {type: source.text, texts: [hi]}
  count: {type: "tests.test_processor_contract:WithOwnMetrics"}
  out: {type: debug.null}
edges: [say -> count -> out]
"""
    )
    report = await asyncio.wait_for(runner.run(graph, measure=True), 10)
    assert report.outcome == "ended"
    node = graph.processors["count"]
    assert node.metrics == {"texts": 0}
    assert timings_of(node) is not node.metrics
