"""Run a timer-triggered function of function_app.py now, as the Functions host would on schedule.

There is no local scheduler: a daily timer is something you want to run on demand while developing.
The function is found through devstack.functions.indexed() (get_functions() works once per app) and
called with azure.functions' own TimerRequest. Settings come from the environment, as in the host.

    python -m devstack.timers check_secret_expiry [--past-due]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from devstack.functions import indexed


def timer_functions() -> list[str]:
    return sorted(name for name, fn in indexed().items() if fn.trigger.get("type") == "timerTrigger")


def run_timer(name: str, *, past_due: bool = False) -> Any:
    """Call the timer function `name` once, now; return what it returns (exceptions propagate)."""
    # The concrete class the worker builds (azure.functions.TimerRequest is its abstract base).
    from azure.functions.timer import TimerRequest

    functions = indexed()
    fn = functions.get(name)
    if fn is None or fn.trigger.get("type") != "timerTrigger":
        raise KeyError(f"no timer function {name!r}; timer functions: {', '.join(timer_functions()) or 'none'}")
    return fn.call(TimerRequest(past_due=past_due))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.timers", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the timer function's name, e.g. check_secret_expiry")
    parser.add_argument("--past-due", action="store_true", help="tell the function its run is late")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_timer(args.name, past_due=args.past_due)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
