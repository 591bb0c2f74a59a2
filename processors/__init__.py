"""Built-in processors: audio, speech, language and debugging nodes."""
