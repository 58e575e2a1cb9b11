"""Lightning plumbing of a run: checkpoint I/O, metrics CSV logger, progress bar, plot."""
