"""Classic recommenders scored by the same protocol as the LLM agents."""

from agents.baselines.classic import PopularityRecommender, TransitionRecommender
from agents.baselines.sasrec import SASRecConfig, SASRecRecommender

__all__ = ["PopularityRecommender", "SASRecConfig", "SASRecRecommender", "TransitionRecommender"]
