"""Where runs run: the sweep driver and its executors (a local worker pool, Ray, Slurm), picked by name.

Kept free of imports: the command line reads EXECUTORS for its choices, and imports
trainer.executors.workers before anything else to start the workers' fork server.
"""

# name -> the module whose EXECUTOR runs a sweep's units there (see trainer.executors.base),
# imported only when chosen.
EXECUTORS = {
    "local": "trainer.executors.local",
    "ray": "trainer.executors.cluster",
    "slurm": "trainer.executors.slurm",
}
