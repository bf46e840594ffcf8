"""Reference computations the tests check the product against, written the plain way."""

from hvd_dqn.nstep import nstep_return


def nstep_trajectory(rewards, gamma: float, n: int, terminated: bool, truncated: bool = False):
    """The n-step transitions of one episode segment of T steps (rewards r_0..r_{T-1}), as a list of
    ``(t, return, discount, bootstrap_index, terminated)``: transition t bootstraps from observation
    ``bootstrap_index`` (= t + m, m = min(n, T - t)) with weight ``discount = gamma^m``.

    If the segment ended (``terminated`` or ``truncated``) its last n - 1 starts have fewer than n rewards and end
    at the final observation: a termination cuts their bootstrap, a truncation (a time limit) keeps it. If it is
    still running, only the starts with n rewards ahead are complete.
    """
    T = len(rewards)
    ended = terminated or truncated
    out = []
    for t in range(T):
        m = min(n, T - t)
        if m < n and not ended:
            break
        ret, discount = nstep_return(rewards[t : t + m], gamma)
        out.append((t, ret, discount, t + m, bool(terminated and t + m == T)))
    return out
