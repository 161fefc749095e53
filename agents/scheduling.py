"""Best-effort thread priorities for the control loop (Linux; silently skipped elsewhere).

A 30 Hz loop on a busy robot computer is late when the OS runs something else at its
wake-up time, not because its own work is slow. Real robot stacks therefore run the
control thread with a real-time policy (SCHED_FIFO). That needs privileges
(CAP_SYS_NICE); without them we fall back to a higher nice value for the loop, or to
nothing, and report what we got. Other threads of the agent are deliberately *not*
demoted: they hold the GIL between numpy calls, and a demoted GIL holder preempted by
another process would stall the loop thread waiting for it (priority inversion).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def raise_current_thread(priority: int) -> tuple[str, Callable[[], None]]:
    """Try SCHED_FIFO(priority), else nice -5, for the calling thread. Returns (what we got, undo)."""
    if not hasattr(os, "sched_setscheduler"):
        return "default", lambda: None
    try:
        old_policy, old_param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))

        def undo() -> None:
            try:
                os.sched_setscheduler(0, old_policy, old_param)
            except OSError:
                pass

        return f"SCHED_FIFO:{priority}", undo
    except (OSError, AttributeError):
        pass
    tid = threading.get_native_id()
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, old - 5)

        def undo_nice() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, old)
            except OSError:
                pass

        return f"nice:{old - 5}", undo_nice
    except (OSError, AttributeError):
        return "default", lambda: None
