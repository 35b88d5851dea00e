"""Everything that protects what a run writes: durable writes (``fsio``), one process per run
directory (``runlock``), what a start may do with a directory that already holds a run
(``rundir``), the trajectory config a resume must match (``runconfig``), checkpoints and their
restore (``checkpoint``, ``resume``), and metrics.jsonl / wandb (``loggers``)."""
