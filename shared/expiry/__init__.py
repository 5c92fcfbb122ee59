"""The client secret's expiry: read its dates, decide, and warn once per threshold through independent channels.

One `ExpiryCheck.run()` serves the daily timer (function_app.py) and `mailrelay expiry check`:
1. read the current version's properties from Key Vault (version, enabled, exp), never its value;
2. decide: ok, a threshold crossed (EXPIRY_WARN_DAYS), no exp, expired, disabled; optionally compare
   with the app registration's passwordCredentials in Entra (EXPIRY_COMPARE_ENTRA);
3. for each warning not yet sent, notify every configured channel (mail, webhook, log) independently,
   and record which channels got it in Table storage, keyed by secret version and threshold.

Expired, disabled and missing secrets are critical and go out on every run: the relay cannot send
at all, and a one-off warning could be the one that nobody read. Everything else goes out once per
secret version, so a new version (the renewal) starts afresh. If the record store is down, the
warning goes out anyway: a duplicate is better than silence.

The package, by concern: `model` (the vocabulary and the outside services' interfaces), `check` (the
decisions and the run), `vault` (the secret's properties in Key Vault), `entra` (the comparison with the
app registration), `channels` (mail, webhook, log) and `records` (once per threshold, in Table storage).
Nothing here imports `shared.bootstrap`: bootstrap builds these pieces and passes them in.

Cheap to import (the timer's handler imports it): SDKs and `requests` load inside calls.
"""

from shared.expiry.channels import (
    TEAMS_CARD,
    LogChannel,
    MailChannel,
    MailSink,
    WebhookChannel,
    is_slack_url,
    webhook_payload,
)
from shared.expiry.check import ExpiryCheck, days_left, evaluate, format_table
from shared.expiry.entra import GraphApplicationCredentials, compare_with_entra, parse_graph_datetime
from shared.expiry.model import (
    ENTRA_TOLERANCE,
    EVENT,
    EXIT_CODES,
    TABLE_NAME,
    Alert,
    Channel,
    ChannelError,
    EntraCredential,
    EntraCredentials,
    ExpiryReadError,
    Finding,
    Report,
    SecretInfo,
    SecretProperties,
    WarningRecords,
    renewal_steps,
)
from shared.expiry.records import MemoryWarningRecords, TableWarningRecords
from shared.expiry.vault import KeyVaultSecretProperties

__all__ = [
    "ENTRA_TOLERANCE",
    "EVENT",
    "EXIT_CODES",
    "TABLE_NAME",
    "TEAMS_CARD",
    "Alert",
    "Channel",
    "ChannelError",
    "EntraCredential",
    "EntraCredentials",
    "ExpiryCheck",
    "ExpiryReadError",
    "Finding",
    "GraphApplicationCredentials",
    "KeyVaultSecretProperties",
    "LogChannel",
    "MailChannel",
    "MailSink",
    "MemoryWarningRecords",
    "Report",
    "SecretInfo",
    "SecretProperties",
    "TableWarningRecords",
    "WarningRecords",
    "WebhookChannel",
    "compare_with_entra",
    "days_left",
    "evaluate",
    "format_table",
    "is_slack_url",
    "parse_graph_datetime",
    "renewal_steps",
    "webhook_payload",
]
