"""Serve the offline engines behind cloud providers' own wire protocols (AssemblyAI's v3 streaming,
OpenAI's audio and chat endpoints), so a client written for the provider runs unchanged against a
Voxgraph server: pointing the official SDK's host at it is the only change."""
