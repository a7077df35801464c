"""The bridge to Buildbot's legacy PB (Perspective Broker) worker protocol, both directions.

Installed as ``wiremsg.compat`` (never as a top-level ``compat``):

- :mod:`wiremsg.compat.translate`: the pure translation between PB calls and updates and the
  wiremsg vocabulary (no PB, no I/O).
- :mod:`wiremsg.compat.pbmaster`: old worker → wiremsg master. A PB server that real
  ``buildbot-worker`` processes log into (``wiremsg master --pb-listen ENDPOINT``); each one
  appears to the :class:`~wiremsg.master.Master` as a native worker with backend ``pb``.
- :mod:`wiremsg.compat.pbworker`: wiremsg worker → old master. A PB client that logs into a
  real Buildbot master as its worker (``wiremsg worker --master pb://host:port``) and runs its
  builds with the wiremsg command runner.
- :mod:`wiremsg.compat.pbsafe`: what may cross the PB wire (a restrictive jelly policy) and
  banana's string limit.
"""
