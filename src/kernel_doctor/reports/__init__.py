"""Reports: the stable JSON contract, where reports are stored, how they look."""
