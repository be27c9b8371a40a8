"""Bronze/silver/gold Spark jobs on Delta Lake: pure transforms, one I/O module, job wiring."""
