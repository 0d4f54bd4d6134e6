"""What a run shows: metrics, plots, VisualDL records, report.md, model complexity."""
