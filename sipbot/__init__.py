"""sipbot: answer phone calls with a realtime speech-to-speech AI."""

__version__ = "0.1.0"
