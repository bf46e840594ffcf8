"""How a rank's training ends, whichever way it ends: completed, preempted, refused or failed. In a job of
several ranks a rank that fails alone must end the job, since the others wait in a collective it will never
join; the ranks that stop together (preempted, refused) leave quietly."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from hvd_dqn import distributed
from hvd_dqn.errors import JobRefused, UserError
from hvd_dqn.preemption import Preempted, StopRequest


@contextlib.contextmanager
def ending(stop: StopRequest, close: Callable[[], None], release: Callable[[], None]) -> Iterator[None]:
    """Around a rank's training: ``stop``'s signal handlers (installed) stay up to the end and go with it,
    ``close`` closes the run's outputs after a preemption (a normal end closes them itself), ``release`` lets the
    run dir's lock and the watchdog go whatever happens."""
    launcher = stop.watch_launcher()
    try:
        yield
    except Preempted:
        # Every rank stopped at the same point, after the checkpoint: nobody waits in a collective. The
        # handlers stay: launchers terminate the other ranks as soon as one exits (srun --kill-on-bad-exit,
        # horovodrun), and a rank still closing must exit with PREEMPTED_EXIT_CODE too, not die of SIGTERM.
        close()
        raise
    except JobRefused:
        stop.uninstall()  # every rank learnt it from a collective and leaves: nobody waits in one
        raise
    except BaseException as exc:
        if distributed.world().size > 1 and not isinstance(exc, KeyboardInterrupt):
            # The other ranks are (or soon will be) blocked in a collective that this rank will never join.
            user_error = isinstance(exc, UserError)
            distributed.abort_job(exc, show_traceback=not user_error, exit_code=2 if user_error else 1)
        stop.uninstall()
        raise
    finally:
        if launcher is not None:
            launcher.cancel()
        release()
    stop.uninstall()
