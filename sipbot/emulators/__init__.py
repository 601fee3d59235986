"""Protocol-faithful emulators of the Gemini Live and OpenAI Realtime APIs (``sipbot emulate``).

``script`` (the behaviour model both share), ``gemini`` / ``openai`` (the servers:
:class:`~sipbot.emulators.gemini.GeminiEmulator`, :class:`~sipbot.emulators.openai.OpenAIEmulator`),
``*_session`` / ``*_wire`` (one connection; the wire schema), ``common`` and ``audio`` (what both
share), ``tls`` (the run-time certificate) and ``cli`` (``sipbot emulate``). Nothing is imported
here, so loading a script does not pull in websockets or cryptography.
"""
