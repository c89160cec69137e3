"""Priors for the command line: the shipped and imported checkpoint folders (listing,
their cards' facts, converting a published DDS checkpoint). Plain functions over
recon.diffusion.registry: quick local work that needs no flow run."""

from __future__ import annotations

from diffrecon.recon.diffusion.registry import (
    PRIORS_DIR,
    card_facts,
    convert_prior,
    import_dds,
    list_priors,
)

__all__ = ["PRIORS_DIR", "card_facts", "convert_prior", "import_dds", "list_priors"]
