"""Example tools for ``configs/examples/assistant-tools.yaml``: made-up weather, no network.

A tool is a plain Python function: its type hints and docstring become the schema the model sees
(the first paragraph is the description, ``Args:`` lines describe the parameters). Replace the table
with a call to a weather service to make it real; a slow one can be ``async``.
"""

from __future__ import annotations

from typing import Literal

FORECASTS: dict[str, tuple[int, str]] = {
    "paris": (21, "sunny"),
    "london": (14, "raining"),
    "rome": (26, "sunny"),
    "oslo": (6, "snowing"),
}
"""Made-up weather: temperature in °C and the sky, by city."""


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, object]:
    """The current weather in a city.

    Args:
        city: the city's name, e.g. Paris
        unit: the unit of the temperature
    """
    found = FORECASTS.get(city.strip().lower())
    if found is None:
        raise LookupError(f"no weather known for {city}; try {', '.join(c.title() for c in FORECASTS)}")
    celsius, sky = found
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city.strip().title(), "temperature": temperature, "unit": unit, "sky": sky}
