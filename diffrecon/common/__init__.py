"""Small shared pieces below both io/ and recon/: image geometry, units, seeds, files and
previews. numpy only (no torch, no Prefect), so io/ and recon/ can both import them."""
