"""Speech-to-speech nodes: one model hears the user and answers aloud (``s2s.openai``, ...)."""
