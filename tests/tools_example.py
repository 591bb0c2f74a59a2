"""Example tools for tests and the README: fixed data, no network.

In YAML::

    tools:
      - weather: tests.tools_example:get_weather
      - {name: slow_search, function: tests.tools_example:slow_search, filler: "Let me look that up."}
      - end_call
"""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated, Literal

from processors.llm.tools import ToolContext

WEATHER = {"paris": 21, "rome": 24, "oslo": 9}
"""Temperatures (°C) get_weather knows."""


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, object]:
    """The current weather in a city.

    Args:
        city: the city's name, e.g. Paris
        unit: the temperature unit to answer in
    """
    celsius = WEATHER.get(city.strip().lower())
    if celsius is None:
        raise ValueError(f"no weather for {city}")
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "sky": "sunny"}


async def slow_search(query: str, seconds: float = 3.0) -> list[str]:
    """Search the knowledge base (slow).

    Args:
        query: what to look for
        seconds: how long the search takes
    """
    await asyncio.sleep(seconds)
    return [f"result for {query}"]


def failing_booking(day: str) -> str:
    """Book a table (always fails: the booking system is down)."""
    raise ConnectionError(f"booking system unreachable for {day}")


def count_letters(word: str) -> int:
    """How many letters a word has (a synchronous tool: it runs in a thread)."""
    return sum(char.isalpha() for char in word)


class Size(enum.Enum):
    """Pizza sizes."""

    SMALL = "small"
    LARGE = "large"


async def order_pizza(
    size: Size,
    toppings: list[str],
    context: ToolContext,
    note: Annotated[str, "anything the kitchen should know"] = "",
    extra_cheese: bool | None = None,
) -> dict[str, object]:
    """Order a pizza; a confirmation is said at once.

    Args:
        size: how big
        toppings: what goes on it, at most five
    """
    await context.say("Order placed.")
    return {"size": size.value, "toppings": toppings, "note": note, "extra_cheese": bool(extra_cheese)}
