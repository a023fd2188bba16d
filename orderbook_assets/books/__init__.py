"""Books from diffs: the sans-I/O builder, the hourly ``book_snapshot`` dataset and the proof
against the exchange's own snapshots. No Dagster and no I/O here (``defs`` wires it)."""
