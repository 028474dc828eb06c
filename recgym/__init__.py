"""recgym: Gymnasium environments for reinforcement learning on LLM-based recommendation.

``import recgym`` registers the RecGen environments and stays fast: numpy and gymnasium only,
never torch, transformers or ``agents``.

Example:
    >>> import gymnasium as gym
    >>> import recgym
    >>> "RecGen-Synthetic-v0" in gym.registry
    True
"""

from recgym.registration import register_envs

__version__ = "0.1.0"

register_envs()
