"""Status records: what became of each send request, kept where apps cannot write (Table storage).

Placeholder for the names the rest of the relay shares; the records themselves follow.
"""

from __future__ import annotations

from typing import Final

TABLE_NAME: Final = "mailstatus"
