"""RecGen environments: single (token level), natively batched vector, PettingZoo, SB3 wrappers."""

from recgym.envs.recgen import RecGenEnv
from recgym.envs.task import RecGenTask, Request

__all__ = ["RecGenEnv", "RecGenTask", "Request"]
