"""The Graph credential's expiry: read its dates, decide, and warn once per threshold through independent channels.

It follows GRAPH_CREDENTIAL. A client secret (secret) and a Key Vault certificate (certificate) expire: their dates
are checked as below. A federated credential and a managed identity (federated, managed-identity) store nothing and
expire never: the check says so and asks for a fresh Graph token instead, alerting on every run while none can be
had (a deleted federated credential, a removed identity); Key Vault is not touched then.

One `ExpiryCheck.run()` serves the daily timer (function_app.py) and `mailrelay expiry check`:
1. read the current version's properties from Key Vault (version, enabled, exp), never its value;
2. decide: ok, a threshold crossed (EXPIRY_WARN_DAYS), no exp, expired, disabled; optionally compare
   with the app registration's passwordCredentials, or keyCredentials for a certificate, in Entra
   (EXPIRY_COMPARE_ENTRA);
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
from shared.expiry.check import SECRETLESS_MODES, ExpiryCheck, days_left, evaluate, format_table, token_finding
from shared.expiry.entra import (
    GraphApplicationCredentials,
    compare_certificate_with_entra,
    compare_with_entra,
    parse_graph_datetime,
    thumbprint_of,
)
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
    GraphToken,
    Report,
    SecretInfo,
    SecretProperties,
    WarningRecords,
    certificate_renewal_steps,
    renewal_steps,
)
from shared.expiry.records import MemoryWarningRecords, TableWarningRecords
from shared.expiry.vault import KeyVaultSecretProperties

__all__ = [
    "ENTRA_TOLERANCE",
    "EVENT",
    "EXIT_CODES",
    "SECRETLESS_MODES",
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
    "GraphToken",
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
    "certificate_renewal_steps",
    "compare_certificate_with_entra",
    "compare_with_entra",
    "days_left",
    "evaluate",
    "format_table",
    "is_slack_url",
    "parse_graph_datetime",
    "renewal_steps",
    "thumbprint_of",
    "token_finding",
    "webhook_payload",
]
