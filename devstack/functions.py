"""function_app.py indexed once, as the Functions host does, for the local host and the tests.

`FunctionApp.get_functions()` may be called only once per app (a second call sees duplicate names),
so every local caller goes through `indexed()`. `indexed("some.module")` indexes another module's `app`
(a small function app of the tests, to exercise the local host without the relay).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IndexedFunction:
    name: str
    trigger: dict[str, Any]  # the trigger binding as the host reads it (type, queueName, schedule, ...)
    call: Callable[..., Any]  # the very user function registered in function_app.py


class _NoAuthLevelNotice(logging.Filter):
    """azure-functions logs "Auth level is not applied to non http function app" (a root WARNING) while
    indexing any app without an HTTP trigger. The real host keeps it out of sight; locally it read like
    a fault at every start of `mailrelay local`, so only that one record is dropped, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Auth level is not applied to non http function app")


APP_MODULE = "function_app"  # the module the Functions host indexes: its `app` is the FunctionApp


def indexed(module: str = APP_MODULE) -> dict[str, IndexedFunction]:
    """The functions of `module`'s `app`, by name."""
    return _indexed(module)  # one cache key per module, however the caller spelt the argument


@functools.cache
def _indexed(module: str) -> dict[str, IndexedFunction]:
    function_app = importlib.import_module(module)
    out: dict[str, IndexedFunction] = {}
    notice = _NoAuthLevelNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        functions = function_app.app.get_functions()
    finally:
        root.removeFilter(notice)
    for fn in functions:
        bindings = [json.loads(b) for b in fn.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        out[fn.get_function_name()] = IndexedFunction(fn.get_function_name(), trigger, fn.get_user_function())
    return out
