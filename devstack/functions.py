"""function_app.py indexed once, as the Functions host does, for the local host and the tests.

`FunctionApp.get_functions()` may be called only once per app (a second call sees duplicate names),
so every local caller goes through `indexed()`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IndexedFunction:
    name: str
    trigger: dict[str, Any]  # the trigger binding as the host reads it (type, queueName, schedule, ...)
    call: Callable[..., Any]  # the very user function registered in function_app.py


@functools.cache
def indexed() -> dict[str, IndexedFunction]:
    import function_app

    out: dict[str, IndexedFunction] = {}
    for fn in function_app.app.get_functions():
        bindings = [json.loads(b) for b in fn.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        out[fn.get_function_name()] = IndexedFunction(fn.get_function_name(), trigger, fn.get_user_function())
    return out
