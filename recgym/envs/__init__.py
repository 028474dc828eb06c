"""RecGen environments: single (token level), natively batched vector, PettingZoo, SB3 wrappers."""

from recgym.envs.multiagent import RecGenParallelEnv
from recgym.envs.recgen import RecGenEnv
from recgym.envs.sb3 import CompactActions, CompactObservation, make_sb3_env
from recgym.envs.task import RecGenTask, Request
from recgym.envs.vector import RecGenVectorEnv

__all__ = [
    "CompactActions", "CompactObservation", "RecGenEnv", "RecGenParallelEnv", "RecGenTask",
    "RecGenVectorEnv", "Request", "make_sb3_env",
]
