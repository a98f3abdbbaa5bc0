"""Every PNG the toolkit draws (matplotlib, Agg; written atomically)."""
