"""Classic recommenders scored by the same protocol as the LLM agents."""

from agents.baselines.classic import PopularityRecommender, TransitionRecommender

__all__ = ["PopularityRecommender", "TransitionRecommender"]
