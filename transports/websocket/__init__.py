"""Serve a graph to browsers: a page, one graph per websocket connection, and the conversation API."""
