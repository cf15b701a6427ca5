"""Where runs run: the sweep driver and its executors (a local worker pool, Ray), by name."""
