"""What every stage shares: the typed config, the context, the results, the layout, atomic writes, locks, lineage, plots."""
