"""Prefect flows: compose tasks, no mathematics."""
