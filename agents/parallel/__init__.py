"""Data parallelism: :mod:`agents.parallel.distributed` (torchrun process groups, shards, global sums,
the failure rule) and :mod:`agents.parallel.fsdp` (``--fsdp``: decoder blocks sharded with FSDP2)."""
