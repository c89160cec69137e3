"""Prefect tasks: retries, caching, tags and artifacts around io/ and recon/."""
