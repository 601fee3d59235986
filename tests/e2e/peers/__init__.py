"""Real SIP peers for end-to-end tests, bounded in time and cleaned up by PID.

Modules (import them directly, e.g. ``from tests.e2e.peers import sipp``):

- ``ports``: free loopback ports and SIPp media port blocks, safe across parallel test processes.
- ``process``: start a process with its logs in files, wait for a readiness line, stop by PID.
- ``audio``: speech made at test time (espeak-ng, sox, ffmpeg), WAV helpers, G.711/G.722
  decoding, ``correlation()`` (proof that received audio is the sent speech), tones, RMS.
- ``sipp``: SIPp UAC/UAS runs and stat.csv results; ``sipp_scenarios`` renders the templates in
  ``tests/e2e/scenarios`` (re-exported by ``sipp``).
- ``baresip``: headless caller / auto-answering callee with recordings and digest registration.
- ``pjsua2_peer``: one pjsua2 call in a subprocess (the script is ``pjsua2_caller.py``).
- ``kamailio``: proxy (record-route), registrar (digest auth), dispatcher (probing, failover).
- ``capture``: dumpcap on ``lo``, RTP parsing, per-SSRC pacing statistics, received audio.
- ``linphone``: linphonec as an optional second client.
- ``postgres``: a throwaway PostgreSQL 15 cluster (temp dir, free port) for call records.

Fixtures (``peers_tmp``, ``speech``, ``sipbot_server``) live in ``tests/e2e/conftest.py``.
"""
