"""TTS nodes: the shared ``SpeechSynthesizer`` base (sentences, audio frames, barge-in) and its engines."""
