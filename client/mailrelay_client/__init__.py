"""The client library of Graph Mail Relay: enqueue send requests the relay will accept.

    from mailrelay_client import MailClient

    mail = MailClient.from_connection_string(conn_str)                 # or MailClient(queue_url, credential)
    billing = MailClient.from_connection_string(conn_str, app="billing")  # app billing's own queue
    message_id = mail.send({"from": "alerts@contoso.com", "to": ["ops@contoso.com"],
                            "subject": "Disk almost full", "body": {"contentType": "text", "content": "97%"}})

Importing it is cheap (standard library only): the Storage SDK and jsonschema load on first use.
"""

from mailrelay_client.client import (
    DEFAULT_APP,
    DEFAULT_QUEUE_NAME,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    File,
    MailClient,
    QueueNotFound,
    RequestTooLarge,
    SendAtRefused,
    app_queue,
    check_files,
    encode_request,
)
from mailrelay_client.status import AmbiguousKey
from mailrelay_client.validation import ContractError, Violation, schema, validate, violations

__all__ = [
    "DEFAULT_APP",
    "DEFAULT_QUEUE_NAME",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "AmbiguousKey",
    "ContractError",
    "File",
    "MailClient",
    "QueueNotFound",
    "RequestTooLarge",
    "SendAtRefused",
    "Violation",
    "app_queue",
    "check_files",
    "encode_request",
    "schema",
    "validate",
    "violations",
]
