"""Local fake servers that speak cloud providers' real wire protocols (tests only)."""
