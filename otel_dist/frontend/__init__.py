"""The ways in to the engine: ``LocalCluster`` (worker processes and an in-process coordinator
on this machine, for the CLI's ``local`` and ``demo`` and for Python) and the coordinator's
Flight server with its HTTP pages. Unlike the engine (``coordinator/``, ``worker/``,
``planner/``, ``exchange/``), front ends may render EXPLAIN ANALYZE."""
