"""Hardware backends: the contract, the entry-point registry, chain selection, built-ins."""
