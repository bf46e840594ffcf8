"""Environments: one gymnasium vector env per rank, seeded apart from every other rank and env.

Classic control: vector envs run in SAME_STEP autoreset mode: a step that ends an episode returns the next
episode's first observation and puts the true last observation in ``info["final_obs"]``, so every step is one
real transition and no autoreset step ever reaches replay.

Atari (``ALE/<Game>-v5``): the DQN preprocessing of Mnih et al. 2015 / Machado et al. 2018 with gymnasium's own
wrappers: the emulator at frameskip 1 with an episode cap in frames, sticky actions as configured
(``StickyActions``: outside the emulator, so that a checkpoint can hold them), then ``AtariPreprocessing`` (up to
``noop_max`` no-ops after reset, frame skip 4 with a max over the last two frames, 84x84 grayscale uint8), then
``FrameStackObservation`` with zero padding at episode starts: (S, 84, 84) uint8. Reward clipping and
terminal-on-life-loss are applied to what replay stores (``tasks.Atari``), so returns stay game scores. The vector env
runs in NEXT_STEP autoreset mode, because the frame replay stores one frame per env per vector step: the step
after an episode ends returns the reset observation (no transition; the replay knows). Training runs these
wrappers in a SyncVectorEnv (their whole state can be checkpointed, ``hvd_dqn.envstate``), or (the default)
ale-py's C++ AtariVectorEnv, set up to give the same frames bit for bit without no-ops and sticky actions
(tests/test_atari.py), faster, but its state cannot be checkpointed; evaluation and ``evaluate --video`` use
``make_env``'s single envs. ale-py's env caps an episode at max_episode_frames frames after its no-ops,
gymnasium's counts them too: at most noop_max frames apart.

MinAtar (``MinAtar/<Game>-v0|v1``, the optional ``minatar`` package): gymnasium's env as its package registers it
(sticky actions and difficulty ramping are its constructor's keywords, ``env_kwargs``), capped at
``envids.MINATAR_MAX_EPISODE_STEPS`` steps unless ``env_kwargs`` sets ``max_episode_steps``, its boolean 10x10xC
frames as uint8; SAME_STEP autoreset and the flat ring replay, as classic control (no frames to stack).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn.envids import (
    ATARI_DEFAULTS,
    MINATAR_EXTRA,
    MINATAR_MAX_EPISODE_STEPS,
    MINATAR_PREFIX,
    is_atari_id,
    is_minatar_id,
)
from hvd_dqn.errors import UserError


def _register_atari() -> None:
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # pragma: no cover - ale-py is a dependency, but classic control needs nothing from it
        pass


def _register_minatar() -> None:
    """MinAtar's ids. Its package declares them as a gymnasium entry point, which gymnasium 1.x no longer reads, so
    they are registered here, once; the package is an optional extra (GPL-3)."""
    if any(env_id.startswith(MINATAR_PREFIX) for env_id in gym.registry):
        return
    try:
        from minatar.gym import register_envs
    except ImportError:
        raise ValueError(f"MinAtar ids need the optional minatar package (GPL-3): {MINATAR_EXTRA}") from None
    register_envs()


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """``"my_pkg.envs:Corridor-v0"`` -> ``("my_pkg.envs", "Corridor-v0")``; a plain id has no module."""
    module, sep, name = env_id.rpartition(":")
    return (module, name) if sep and module else (None, env_id)


def env_spec(env_id: str):
    """gymnasium's EnvSpec of ``env_id``, importing the module of a ``module:id`` first (gymnasium's own
    convention; ``gym.spec`` alone never imports it). Raises ValueError with one line naming the problem."""
    module, name = split_env_id(env_id)
    if module is not None:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"cannot import module {module!r} of {env_id!r} ({exc}); is it installed or on "
                "PYTHONPATH on every host?"
            ) from None
        except Exception as exc:  # the user's module failed while importing: say which and how, not a traceback
            raise ValueError(
                f"importing module {module!r} of {env_id!r} failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
    if is_atari_id(name):
        _register_atari()
    elif is_minatar_id(name):
        _register_minatar()
    try:
        return gym.spec(name)
    except gym.error.Error as exc:
        where = f"module {module!r} registers no env {name!r}" if module else f"unknown gymnasium env id {name!r}"
        raise ValueError(f"{where} ({_first_line(exc)})") from None


def check_env_id(env_id: str) -> None:
    """Raise ValueError (turned into a config error) if gymnasium does not know ``env_id``."""
    env_spec(env_id)


def reward_threshold(env_id: str) -> float | None:
    return env_spec(env_id).reward_threshold


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."


class OneHot(gym.ObservationWrapper):
    """Discrete observations as one-hot float32 vectors, so every classic-control task feeds the same MLP."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._n = int(env.observation_space.n)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self._n,), np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        out = np.zeros(self._n, np.float32)
        out[int(observation)] = 1.0
        return out


class MinAtarFrames(gym.ObservationWrapper):
    """MinAtar's boolean 10x10xC frames as uint8 0/1: an image to the replay (one byte per cell, as stored) and to
    the MinAtar network, which casts it to float itself. Its rgb_array renders (for ``evaluate --video``) as
    uint8 with each cell 16x16 pixels: MinAtar draws 10x10 float colours, which video writers do not take."""

    CELL_PIXELS = 16

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 1, env.observation_space.shape, np.uint8)
        self.metadata = {**env.metadata, "render_fps": 10}

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(observation, dtype=np.uint8)

    def render(self):
        frame = self.env.render()
        if self.render_mode != "rgb_array" or frame is None:
            return frame
        frame = np.round(np.asarray(frame, np.float64) * 255).astype(np.uint8)
        return frame.repeat(self.CELL_PIXELS, axis=0).repeat(self.CELL_PIXELS, axis=1)


class AsFloat32(gym.ObservationWrapper):
    """A vector observation of another dtype (float64, ints) as float32, the MLP's input."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        with np.errstate(over="ignore"):  # float64 bounds beyond float32's range become +-inf, as they mean
            low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, space.shape, np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


FRAME_PADDING = "zero"  # how FrameStackObservation pads an episode's first stacks; the frame replay pads alike


def atari_options(config) -> dict[str, Any]:
    """The keywords of ``make_env`` for an Atari config, a Config or its dict (empty for classic control)."""
    data = config if isinstance(config, dict) else config.to_dict()
    if not is_atari_id(str(data.get("env_id", ""))):
        return {}
    return {key: data[key] for key in ATARI_DEFAULTS if key in data}


def env_options(config) -> dict[str, Any]:
    """All keywords of ``make_env`` for a config (a Config or its dict): the user's ``env_kwargs`` for the env's
    constructor, and for Atari the preprocessing options."""
    data = config if isinstance(config, dict) else config.to_dict()
    return {**(data.get("env_kwargs") or {}), **atari_options(data)}


def _with_atari_defaults(kwargs: dict[str, Any]) -> tuple[int, int, float, int]:
    """(frame_stack, noop_max, sticky_action_prob, max_episode_frames) taken out of ``kwargs``, defaults filled."""
    return tuple(kwargs.pop(key, default) for key, default in ATARI_DEFAULTS.items())


class StickyActions(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Sticky actions as the ALE emulator makes them (Machado et al. 2018): each frame keeps the action of the frame
    before with probability ``prob``. Done here instead of in the emulator because ale-py's saved state
    (``cloneState``) leaves out the action the emulator holds, so an emulator restored from a checkpoint would
    not go on exactly; here it is an attribute that hvd_dqn.envstate saves, drawn from the env's np_random (saved
    too). Below AtariPreprocessing, so it acts per emulator frame."""

    def __init__(self, env: gym.Env, prob: float):
        gym.utils.RecordConstructorArgs.__init__(self, prob=prob)
        gym.Wrapper.__init__(self, env)
        self.prob = float(prob)
        self.held = 0  # after a reset the emulator holds NOOP, the first action of every game's set but two

    def reset(self, **kwargs: Any):
        self.held = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        if self.prob == 0.0 or self.np_random.random() >= self.prob:
            self.held = action
        return self.env.step(self.held)


def make_atari_env(env_id: str, frame_padding: str = FRAME_PADDING, **kwargs: Any) -> gym.Env:
    """One ALE env with the DQN preprocessing: (frame_stack, 84, 84) uint8 observations, 4 frames per step.
    ``kwargs``: the Atari options (``envids.ATARI_DEFAULTS`` where not given), then keywords for ``gym.make``."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    frame_stack, noop_max, sticky_action_prob, max_episode_frames = _with_atari_defaults(kwargs)
    _register_atari()
    try:
        env = gym.make(
            env_id, frameskip=1, repeat_action_probability=0.0, max_num_frames_per_episode=max_episode_frames, **kwargs
        )
    except gym.error.Error as exc:
        raise UserError(f"env {env_id!r}: {exc}") from None
    env = StickyActions(env, sticky_action_prob)
    env = AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=4,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    return FrameStackObservation(env, frame_stack, padding_type=frame_padding)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """One environment with the observation wrappers the networks expect (``kwargs``: Atari options of
    ``make_atari_env``, or the keywords of the env's constructor, through ``gym.make``)."""
    if is_atari_id(env_id):
        return make_atari_env(split_env_id(env_id)[1], **kwargs)
    env_spec(env_id)  # a module:id's module imported, or one line on what is wrong
    minatar = is_minatar_id(env_id)
    if minatar:
        kwargs.setdefault("max_episode_steps", MINATAR_MAX_EPISODE_STEPS)  # envids.py says why
        # gymnasium's checker would warn about the raw env's float 10x10 renders, which MinAtarFrames converts
        kwargs.setdefault("disable_env_checker", True)
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise UserError(f"env {env_id!r}: {_first_line(exc)}") from None
    except Exception as exc:  # the env's own constructor refused its arguments, or failed
        given = f" with env_kwargs {kwargs}" if kwargs else ""
        raise UserError(f"env {env_id!r} could not be made{given}: {type(exc).__name__}: {_first_line(exc)}") from None
    check_action_space(env_id, env.action_space)
    return observation_wrappers(MinAtarFrames(env) if minatar else env, env_id)


def check_action_space(env_id: str, space) -> None:
    """DQN picks one of n actions by its Q-value: a Discrete action space (starting at 0), nothing else."""
    if isinstance(space, gym.spaces.Discrete) and int(space.start) == 0:
        return
    if isinstance(space, gym.spaces.Discrete):
        why = f"its actions start at {int(space.start)}; DQN's are 0..n-1 (wrap the env to shift them)"
    elif isinstance(space, gym.spaces.Box):
        why = (
            "it is continuous, and DQN takes the max over a finite set of actions (discretise it with a wrapper, "
            "or use an algorithm for continuous control)"
        )
    else:
        why = "DQN needs a single Discrete action space (flatten several choices into one Discrete with a wrapper)"
    raise UserError(f"env {env_id!r}: action space {space} cannot be served: {why}")


def is_image_space(space) -> bool:
    """uint8 Box observations of 2 or 3 dims are images (a CNN); other Boxes are vectors (an MLP)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def stored_obs_dtype(obs_shape: tuple[int, ...]):
    """How replay stores an observation of this shape from ``make_env``: ``observation_wrappers`` leaves 3-dim ones
    only as uint8 images (MinAtar's 0/1 frames, a user's pixels), kept so, 4x smaller than float32; the rest are
    float32 vectors."""
    return np.uint8 if len(obs_shape) == 3 else np.float32


def observation_wrappers(env: gym.Env, env_id: str) -> gym.Env:
    """What each observation space becomes: Discrete -> one-hot float32 vector; Dict, Tuple and multi-dim
    non-image Boxes -> flattened float32 vector (gymnasium's FlattenObservation); uint8 images -> kept as
    they are, a 2-D one with a channel axis added (channels first); 1-D Boxes -> float32."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Discrete):
        return OneHot(env)
    if is_image_space(space):
        if len(space.shape) == 2:
            env = gym.wrappers.ReshapeObservation(env, (1, *space.shape))
        return env
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) or (
        isinstance(space, gym.spaces.Box) and len(space.shape) > 1
    ):
        try:
            env = gym.wrappers.FlattenObservation(env)
        except Exception as exc:  # a space gymnasium cannot flatten (Graph, Sequence, Text inside it)
            raise UserError(
                f"env {env_id!r}: observation space {space} cannot be flattened into a vector ({_first_line(exc)})"
            ) from None
        space = env.observation_space
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
        raise UserError(
            f"env {env_id!r}: observation space {space} cannot be served: the networks take a vector "
            "(Box, Discrete, Dict or Tuple of those) or a uint8 image"
        )
    return env if space.dtype == np.float32 else AsFloat32(env)


def make_vector_env(
    env_id: str, num_envs: int, backend: str = "gymnasium", threads: int = 1, **kwargs: Any
) -> gym.vector.VectorEnv:
    """This rank's envs in one vector env: SAME_STEP autoreset for classic control, NEXT_STEP for Atari (see
    the module's docstring). Atari ``backend``: "gymnasium" (``make_env``'s wrappers in a SyncVectorEnv) or "ale"
    (ale-py's C++ AtariVectorEnv on ``threads`` threads: the same frames, bit for bit, as tests/test_atari.py
    checks, faster with several envs)."""
    if backend == "ale" and is_atari_id(env_id):
        return _ale_vector_env(split_env_id(env_id)[1], num_envs, threads, **kwargs)
    mode = gym.vector.AutoresetMode.NEXT_STEP if is_atari_id(env_id) else gym.vector.AutoresetMode.SAME_STEP
    return gym.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(num_envs)], autoreset_mode=mode)


def _ale_vector_env(
    env_id: str, num_envs: int, threads: int, frame_padding: str = FRAME_PADDING, **options: Any
) -> gym.vector.VectorEnv:
    from ale_py.vector_env import AtariVectorEnv

    frame_stack, noop_max, sticky_action_prob, max_episode_frames = _with_atari_defaults(options)
    if options:
        raise TypeError(f"unexpected keywords for the ale vector env: {', '.join(options)}")

    if frame_padding != "zero":
        raise UserError("the ale vector env pads frame stacks with zeros only")

    class SeededAtariVectorEnv(AtariVectorEnv):
        def reset(self, *, seed=None, options=None):  # a list of per-env seeds, as SyncVectorEnv takes
            seed = np.asarray(seed, np.int64) % 2**31 if isinstance(seed, (list, tuple)) else seed
            return super().reset(seed=seed, options=options)

    _register_atari()
    game = gym.spec(env_id).kwargs["game"]  # the ROM id: "pong", "space_invaders"
    # the preprocessing of make_atari_env: no FIRE on reset, no episodic life, no reward clipping (tasks.Atari
    # clips what replay stores and handles lost lives itself)
    return SeededAtariVectorEnv(
        game,
        num_envs,
        num_threads=max(1, min(threads, num_envs)),
        max_num_frames_per_episode=max_episode_frames,
        repeat_action_probability=sticky_action_prob,
        stack_num=frame_stack,
        frameskip=4,
        maxpool=True,
        noop_max=noop_max,
        episodic_life=False,
        reward_clipping=False,
        use_fire_reset=False,
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )


def true_next_obs(next_obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """The observation each env really reached: the final one where an episode just ended (SAME_STEP mode)."""
    if not done.any():
        return next_obs
    out = next_obs.copy()
    for i in np.flatnonzero(done):
        out[i] = info["final_obs"][i]
    return out
