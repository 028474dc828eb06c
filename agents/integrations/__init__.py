"""recgym inside other training libraries: :mod:`agents.integrations.trl` (TRL's ``GRPOTrainer``)."""
