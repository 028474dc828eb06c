"""Training and evaluation of LLM policies.

* :mod:`agents.training.sft`, :mod:`agents.training.rl`: the two training loops;
* :mod:`agents.training.loop`: what they share (LR schedule, optimizer, validation), re-exported here
  because ``agents.training`` was that module before the package;
* :mod:`agents.training.evaluate`: HR/NDCG@K under the reference protocol;
* :mod:`agents.training.checkpoint`, :mod:`agents.training.runs`, :mod:`agents.training.saved`,
  :mod:`agents.training.tracking`: atomic checkpoints, run folders and fingerprints, checks of saved
  folders, metric logs.
"""

from agents.training.loop import (
    MIN_VALID_SAMPLE,
    check_valid_sample,
    hidden_dropout,
    make_optimizer,
    policy_writer,
    shard_for_training,
    validate,
    warmup_cosine,
)

__all__ = ["MIN_VALID_SAMPLE", "check_valid_sample", "hidden_dropout", "make_optimizer", "policy_writer",
           "shard_for_training", "validate", "warmup_cosine"]
