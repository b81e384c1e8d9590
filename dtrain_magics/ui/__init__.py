"""What the notebook shows: the run dashboard and its text fallback, charts, the config form."""
