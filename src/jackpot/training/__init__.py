"""Lightning plumbing of a run: checkpoint I/O, the metrics CSV logger, the progress bar, the plot."""
