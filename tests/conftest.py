from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def indexed() -> dict[str, Any]:
    """function_app.py indexed as the Functions host does (once per process: see devstack.functions)."""
    from devstack.functions import indexed

    return indexed()


@pytest.fixture(scope="session")
def functions(indexed: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """The user functions registered in function_app.py, by name: what the host calls."""
    return {name: f.call for name, f in indexed.items()}
