"""function_app.py indexed once, as the Functions host does, for the local host and the tests.

`FunctionApp.get_functions()` may be called only once per app (a second call sees duplicate names),
so every local caller goes through `indexed()`.
"""

from __future__ import annotations

import functools
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


@functools.cache
def indexed() -> dict[str, IndexedFunction]:
    import function_app

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
