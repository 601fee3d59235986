"""Operating a running sipbot: admission and drain, loop-lag watch, metrics, the HTTP side
listener (health, readiness, status, the live-calls page).

- :mod:`sipbot.ops.admission`: the sans-I/O admission decision and drain state.
- :mod:`sipbot.ops.looplag`: the event-loop lag monitor (one small task).
- :mod:`sipbot.ops.observe`: what the operator sees of a call (live snapshots, recent calls,
  provider/tool counters) without touching the call's hot path.
- :mod:`sipbot.ops.metrics`: Prometheus metrics (the only module importing prometheus_client).
- :mod:`sipbot.ops.http`: the aiohttp listener (the only module importing aiohttp).
"""
