"""The coordinator: planning hand-off, task scheduling, result collection, and local clusters."""
