"""recgym: Gymnasium environments for reinforcement learning on LLM-based recommendation.

``import recgym`` is kept fast: it imports numpy only, never torch and never ``agents``.
"""

__version__ = "0.1.0"
