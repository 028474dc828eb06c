"""agents: policies, learners and baselines that use recgym only through its public API."""
