"""The families of env ids that get their own preprocessing and network: Atari (``ALE/<Game>-v5``) and MinAtar
(``MinAtar/<Game>-v0`` and ``-v1``), each also as ``module:id``. Pure string rules, importable without gymnasium.
"""

from __future__ import annotations

# Atari: the preprocessing options and their defaults, declared once (the config's fields, envs.make_env and the
# ale vector env all read these)
ATARI_PREFIX = "ALE/"
ATARI_DEFAULTS = {"frame_stack": 4, "noop_max": 30, "sticky_action_prob": 0.25, "max_episode_frames": 108_000}

# MinAtar (Young & Tian 2019): the optional ``minatar`` package registers these ids with gymnasium
MINATAR_PREFIX = "MinAtar/"
MINATAR_EXTRA = "pip install 'hvd-dqn[minatar]'"  # GPL-3: an optional extra, never a core dependency
# MinAtar registers no time limit, and Breakout, Seaquest, Space Invaders and Asterix go on for as long as the agent
# survives: without a cap a greedy evaluation of an agent that never loses would never end. The ALE's cap in agent
# steps (108k frames at frame skip 4, Machado et al. 2018); ``env_kwargs: {max_episode_steps: ...}`` changes it,
# null removes it.
MINATAR_MAX_EPISODE_STEPS = 27_000


def is_atari_id(env_id: str) -> bool:
    """ALE envs (also as ``module:ALE/...``): Atari preprocessing, the Nature CNN and the frame-once replay."""
    return env_id.rpartition(":")[2].startswith(ATARI_PREFIX)


def is_minatar_id(env_id: str) -> bool:
    """MinAtar envs (also as ``module:MinAtar/...``): 10x10xC boolean frames, the MinAtar network."""
    return env_id.rpartition(":")[2].startswith(MINATAR_PREFIX)
