"""The coordinator: planning hand-off, task scheduling, worker membership and health, result
collection and live progress. It never renders EXPLAIN (the front ends in ``frontend/`` do)."""
