"""The admin and inspection API under /_emulator/ (documented in the package docstring), and seeds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from devstack.emulator.common import _json_object, _json_response, _Request, _required_str, _Response
from devstack.emulator.entra import EntraID
from devstack.emulator.graph import GraphMail
from devstack.emulator.identity import ManagedIdentity
from devstack.emulator.keyvault import KeyVault

_SEED_KEYS = ("apps", "identities", "mailboxes", "secrets", "certificates", "faults")


class AdminAPI(EntraID, ManagedIdentity, KeyVault, GraphMail):
    """The admin and inspection API under /_emulator/, and seeds: each entry goes to its service's parser.

    A part of `Emulator`; the state it reads and resets is `TenantState`'s.
    """

    def load_seed(self, seed: Mapping[str, Any]) -> None:
        """Apply a seed document: ``{"apps": [...], "identities": [...], "mailboxes": [...], "secrets": [...],
        "certificates": [...], "faults": [...]}``, in that order (an identity's default tenant is the first app's).

        Entries use the admin API's camelCase fields (see the package docstring, in __init__.py).
        """
        unknown = set(seed) - set(_SEED_KEYS)
        if unknown:
            raise ValueError(f"unknown seed keys: {', '.join(sorted(unknown))}")
        for entry in seed.get("apps", []):
            self._apply_app(entry)
        for entry in seed.get("identities", []):
            self._apply_identity(entry)
        for entry in seed.get("mailboxes", []):
            self._apply_mailbox(entry)
        for entry in seed.get("secrets", []):
            self._apply_secret(entry)
        for entry in seed.get("certificates", []):
            self._apply_certificate(entry)
        for entry in seed.get("faults", []):
            self._apply_fault(entry)

    def _admin(self, request: _Request, parts: list[str]) -> _Response:
        route = (request.method, "/".join(parts))
        try:
            if route == ("GET", "outbox"):
                return _json_response(200, self.outbox)
            if route == ("GET", "sent-items"):
                return _json_response(200, self.sent_items(request.param("mailbox") or ""))
            if route == ("GET", "throttling"):
                return _json_response(200, self.throttling())
            if route == ("GET", "drafts"):
                return _json_response(200, self.drafts_view())
            if route == ("GET", "inbox"):
                return _json_response(200, self.inbox_items(request.param("mailbox") or ""))
            if route == ("GET", "transport"):
                return _json_response(200, self.transport_view())
            if route == ("GET", "copies"):
                return _json_response(200, self.copies_by_mark())
            if route == ("GET", "stats"):
                return _json_response(200, self.stats)
            if route == ("GET", "faults"):
                return _json_response(200, self.faults)
            if request.method != "POST":
                return _json_response(404, {"error": f"no admin endpoint {request.method} /_emulator/{route[1]}"})
            payload = json.loads(request.body or b"{}")
            if route[1] == "reset":
                self.reset()
            elif route[1] == "expire-tokens":
                self.expire_tokens()
            elif route[1] in ("apps", "app"):
                self._apply_app(_json_object(payload))
            elif route[1] == "identity":
                self._apply_identity(_json_object(payload))
            elif route[1] == "app-federated-credential":
                return _json_response(200, {"id": self._apply_app_federated_credential(_json_object(payload))})
            elif route[1] == "app-key-credential":
                return _json_response(200, {"keyId": self._apply_app_key_credential(_json_object(payload))})
            elif route[1] == "certificate":
                return _json_response(200, {"version": self._apply_certificate(_json_object(payload))})
            elif route[1] == "app-secret":
                self._apply_app_secret(_json_object(payload))
            elif route[1] == "app-credentials":
                return _json_response(200, {"keyId": self._apply_app_credential(_json_object(payload))})
            elif route[1] == "secret-properties":
                return _json_response(200, {"version": self._apply_secret_properties(_json_object(payload))})
            elif route[1] == "mailboxes":
                self._apply_mailbox(_json_object(payload))
            elif route[1] == "scope":
                body = _json_object(payload)
                if not isinstance(body.get("inScope"), bool):
                    raise ValueError("inScope is required and must be true or false")
                delay = body.get("delaySeconds")
                if delay is not None and (not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0):
                    raise ValueError("delaySeconds must be a number of seconds, at least 0")
                self.set_exchange_scope(_required_str(body, "address"), body["inScope"], delay)
            elif route[1] == "exchange":
                self.configure_exchange(_json_object(payload))
                self.configure_drafts(_json_object(payload))
            elif route[1] == "vault-access":
                body = _json_object(payload)
                if not isinstance(body.get("canReadSecrets"), bool):
                    raise ValueError("canReadSecrets is required and must be true or false")
                self.set_vault_access(_required_str(body, "clientId"), body["canReadSecrets"])
            elif route[1] == "secrets":
                return _json_response(200, {"version": self._apply_secret(_json_object(payload))})
            elif route[1] == "faults":
                self._apply_fault(_json_object(payload))
            elif route[1] == "transport":
                self.configure_transport(_json_object(payload))
            elif route[1] == "throttling":
                self.configure_throttling(_json_object(payload))
            elif route[1] == "faults-clear":
                self.clear_faults()
            else:
                return _json_response(404, {"error": f"no admin endpoint POST /_emulator/{route[1]}"})
        except (ValueError, TypeError, KeyError) as exc:
            # json.JSONDecodeError is a ValueError. Messages name fields, never secret values.
            return _json_response(400, {"error": str(exc)})
        return _json_response(200, {"ok": True})
