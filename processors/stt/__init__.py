"""Speech-to-text nodes. ``segmented`` is the base of utterance-at-a-time recognisers."""

from processors.stt.segmented import Transcription, UtteranceParams, UtteranceSTT

__all__ = ["Transcription", "UtteranceParams", "UtteranceSTT"]
