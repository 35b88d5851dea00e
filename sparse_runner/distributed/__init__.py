"""Data-parallel runs (torchrun, SLURM tasks): the process group, collectives and mask hashes
(``comm``), the run-level pieces that are the identity for one process (``ddp``: sharded
loaders, DDP wrapping, SyncBatchNorm, mask broadcast, per-rank RNG), stop requests from signals
on any rank (``stop``) and one run directory per launch (``launch``)."""
