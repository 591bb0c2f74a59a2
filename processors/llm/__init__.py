"""LLM nodes: the shared ``ChatLLM`` base (turns, history, barge-in) and its engines."""
