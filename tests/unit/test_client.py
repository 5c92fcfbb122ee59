"""mailrelay_client: validation, encoding as host.json reads it, the 64 KiB limit, time-to-live."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from mailrelay_client import MAX_REQUEST_BYTES, ContractError, MailClient, RequestTooLarge, encode_request

REQUEST: dict[str, Any] = {
    "from": "alerts@contoso.com",
    "to": ["Ada Lovelace <ada@contoso.com>"],
    "subject": "Disk almost full \u00e0 97 %",  # non-ASCII: UTF-8 inside the base64
    "body": {"contentType": "text", "content": "97% used on /var"},
}


@dataclass
class Sent:
    id: str


class FakeQueue:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def send_message(self, content: Any, **kwargs: Any) -> Sent:
        self.calls.append((content, kwargs))
        return Sent(f"msg-{len(self.calls)}")


def decode(text: str) -> Any:
    return json.loads(base64.b64decode(text, validate=True).decode("utf-8"))


def test_send_encodes_base64_of_utf8_json_and_never_expires() -> None:
    queue = FakeQueue()
    assert MailClient.from_queue_client(queue).send(REQUEST) == "msg-1"
    ((content, kwargs),) = queue.calls
    assert isinstance(content, str) and content.isascii()
    assert decode(content) == REQUEST
    assert kwargs == {"time_to_live": -1}


def test_an_invalid_request_raises_the_contract_error_and_sends_nothing() -> None:
    queue = FakeQueue()
    bad = {**REQUEST, "subject": "two\nlines", "priority": "high"}
    with pytest.raises(ContractError) as caught:
        MailClient.from_queue_client(queue).send(bad)
    fields = [v.field for v in caught.value.violations]
    assert "subject" in fields and "priority" in fields
    assert queue.calls == []


class FakeContainer:
    """The mail-payloads container: blobs by name, as the SDK's ContainerClient takes them."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.deleted: list[str] = []

    def upload_blob(self, name: str, data: Any, length: int | None = None, overwrite: bool = False) -> None:
        assert not overwrite and name not in self.blobs
        self.blobs[name] = data if isinstance(data, bytes) else data.read()
        assert length == len(self.blobs[name])

    def delete_blob(self, name: str) -> None:
        self.deleted.append(name)
        del self.blobs[name]


def test_a_body_too_large_for_the_queue_goes_to_a_blob_and_the_request_names_it() -> None:
    import hashlib

    queue, container = FakeQueue(), FakeContainer()
    content = "confidential-7f3a " * 6000
    big = {**REQUEST, "body": {"contentType": "text", "content": content}}
    MailClient.from_queue_client(queue, payloads=container).send(big)
    ((text, _),) = queue.calls
    body = decode(text)["body"]
    assert body.keys() == {"contentType", "blob", "size", "sha256"} and "confidential" not in text
    stored = container.blobs[body["blob"]]
    assert stored == content.encode() and body["size"] == len(stored)
    assert body["sha256"] == hashlib.sha256(stored).hexdigest()


def test_the_largest_inline_attachment_moves_first_and_small_ones_stay_inline() -> None:
    queue, container = FakeQueue(), FakeContainer()
    small = {"name": "a.txt", "contentType": "text/plain", "contentBytes": base64.b64encode(b"x" * 100).decode()}
    large = {"name": "b.bin", "contentType": "application/octet-stream"}
    large["contentBytes"] = base64.b64encode(b"y" * 60_000).decode()
    MailClient.from_queue_client(queue, payloads=container).send({**REQUEST, "attachments": [small, large]})
    attachments = decode(queue.calls[0][0])["attachments"]
    assert attachments[0] == small
    assert "contentBytes" not in attachments[1] and container.blobs[attachments[1]["blob"]] == b"y" * 60_000
    assert attachments[1]["blob"].endswith("/b.bin")


def test_a_request_too_large_without_its_body_and_attachments_is_refused_and_stores_nothing() -> None:
    queue, container = FakeQueue(), FakeContainer()
    secret_words = "confidential-7f3a "
    big = {
        **REQUEST,
        "body": {"contentType": "text", "content": secret_words * 3000},
        "headers": {f"X-H{i}": "h" * 14_000 for i in range(5)},
    }
    with pytest.raises(RequestTooLarge) as caught:
        MailClient.from_queue_client(queue, payloads=container).send(big)
    text = str(caught.value)
    assert f"{caught.value.size:,}" in text and "65,536" in text
    assert "stored as blobs" in text
    assert "confidential" not in text  # the error never carries the content
    assert queue.calls == [] and container.blobs == {}


def test_blobs_of_a_request_the_queue_refused_are_deleted() -> None:
    from azure.core.exceptions import HttpResponseError

    class RefusingQueue(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Sent:
            error = HttpResponseError("The request body is too large")
            error.status_code = 413
            raise error

    container = FakeContainer()
    big = {**REQUEST, "body": {"contentType": "text", "content": "z" * 70_000}}
    with pytest.raises(HttpResponseError):
        MailClient.from_queue_client(RefusingQueue(), payloads=container).send(big)
    assert len(container.deleted) == 1 and container.blobs == {}


@pytest.mark.parametrize("error", [ConnectionError("reset after the request was written"), TimeoutError("read")])
def test_blobs_of_a_request_whose_enqueue_may_have_happened_are_kept(error: Exception) -> None:
    """A dropped connection or a timeout may come after the queue took the message: deleting its payload would make a
    request on the queue a PayloadMissing dead letter. The caller's retry of the same id is sent once."""

    class AmbiguousQueue(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Sent:
            raise error

    container = FakeContainer()
    big = {**REQUEST, "body": {"contentType": "text", "content": "z" * 70_000}}
    with pytest.raises(type(error)):
        MailClient.from_queue_client(AmbiguousQueue(), payloads=container).send(big)
    assert container.deleted == [] and len(container.blobs) == 1


def test_blobs_stored_before_a_failure_that_stops_the_enqueue_are_deleted() -> None:
    class FailingContainer(FakeContainer):
        def upload_blob(self, name: str, data: Any, length: int | None = None, overwrite: bool = False) -> None:
            if self.blobs:
                raise ConnectionError("blob service down")
            super().upload_blob(name, data, length, overwrite)

    container, queue = FailingContainer(), FakeQueue()
    big = {**REQUEST, "body": {"contentType": "text", "content": "z" * 70_000}}
    big["attachments"] = [
        {
            "name": "a.bin",
            "contentType": "application/octet-stream",
            "contentBytes": base64.b64encode(b"a" * 60_000).decode(),
        }
    ]
    with pytest.raises(ConnectionError):
        MailClient.from_queue_client(queue, payloads=container).send(big)
    assert queue.calls == [] and len(container.deleted) == 1 and container.blobs == {}


def test_files_are_inline_when_small_and_streamed_to_a_blob_when_large(tmp_path: Any) -> None:
    import hashlib

    from mailrelay_client import File

    small, large = tmp_path / "note.txt", tmp_path / "Report Q3 (final).pdf"
    small.write_bytes(b"hello")
    large.write_bytes(bytes(range(256)) * 400)  # 100 KiB
    queue, container = FakeQueue(), FakeContainer()
    MailClient.from_queue_client(queue, payloads=container).send(
        REQUEST, files=[small, File(large, content_id="chart1")]
    )
    first, second = decode(queue.calls[0][0])["attachments"]
    assert first == {
        "name": "note.txt",
        "contentType": "text/plain",
        "contentBytes": base64.b64encode(b"hello").decode(),
    }
    assert second["name"] == "Report Q3 (final).pdf" and second["contentType"] == "application/pdf"
    assert second["isInline"] is True and second["contentId"] == "chart1"
    assert second["blob"].endswith("/Report_Q3_final_.pdf")
    assert container.blobs[second["blob"]] == large.read_bytes()
    assert second["sha256"] == hashlib.sha256(large.read_bytes()).hexdigest() and second["size"] == 102_400


def test_send_at_enqueues_visible_at_once_and_refuses_the_past_and_beyond_7_days() -> None:
    """Visible, the relay records the request `scheduled` at once (status finds it, maxScheduled counts it) and holds
    it on its retry queue; hidden until its time (as clients did before issue 21), it looked lost until then."""
    from datetime import UTC, datetime, timedelta

    from mailrelay_client import SendAtRefused

    queue = FakeQueue()
    client = MailClient.from_queue_client(queue)
    when = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    client.send({**REQUEST, "sendAt": when})
    ((content, kwargs),) = queue.calls
    assert kwargs == {"time_to_live": -1} and decode(content)["sendAt"] == when  # no visibility_timeout
    for wrong, says in ((timedelta(hours=-1), "in the past"), (timedelta(days=7, minutes=1), "7 days")):
        with pytest.raises(SendAtRefused, match=says):
            client.send({**REQUEST, "sendAt": (datetime.now(UTC) + wrong).isoformat()})
    assert len(queue.calls) == 1


def test_the_limit_is_on_the_encoded_text_exactly() -> None:
    # Find a body that encodes to exactly the limit, then one byte of JSON more.
    def sized(n: int) -> dict[str, Any]:
        return {**REQUEST, "body": {"contentType": "text", "content": "x" * n}}

    def size(n: int) -> int:
        from shared.queues import encode  # the relay's own encoding: the client must match it

        return len(encode(sized(n)))

    low, high = 0, MAX_REQUEST_BYTES  # size(low) fits, size(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) <= MAX_REQUEST_BYTES else (low, mid)
    n = low
    assert len(encode_request(sized(n))) <= MAX_REQUEST_BYTES
    with pytest.raises(RequestTooLarge):
        encode_request(sized(n + 1))


def test_send_rejects_what_is_not_a_request_object() -> None:
    with pytest.raises(TypeError):
        MailClient.from_queue_client(FakeQueue()).send(json.dumps(REQUEST))  # type: ignore[arg-type]


def test_importing_the_client_loads_neither_jsonschema_nor_the_azure_sdk_nor_the_relay() -> None:
    code = (
        "import sys, mailrelay_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'azure', 'jsonschema', 'shared')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_client_encodes_exactly_as_the_relay_does() -> None:
    from shared.queues import encode

    assert encode_request(REQUEST) == encode(REQUEST)


def test_a_token_credential_over_plain_http_says_what_works_instead() -> None:
    class Token:
        def get_token(self, *scopes: str) -> None: ...

    with pytest.raises(ValueError, match="from_connection_string"):
        MailClient("http://127.0.0.1:10001/devstoreaccount1/mail-outbox", Token())


def bad(**fields: Any) -> dict[str, Any]:
    return {**REQUEST, **fields}


# (a broken request, the field the violation names, words of the rule a developer can act on)
MESSAGES: list[tuple[dict[str, Any], str, str]] = [
    ({k: v for k, v in REQUEST.items() if k != "from"}, "from", "is required"),
    (bad(to=[], cc=[]), "to/cc/bcc", "at least one recipient is required in to, cc or bcc"),
    (bad(to=[f"u{i}@contoso.com" for i in range(501)]), "to/cc/bcc", "501 recipients"),
    (bad(subject="Hi\r\nBcc: all@contoso.com"), "subject", "found U+000D at character 3"),
    (bad(subject=7), "subject", "must be a string, not a number (7)"),
    (bad(headers={"Subject": "x"}), 'headers["Subject"]', 'a custom header name: "X-"'),
    (bad(headers={"X-A": "a\u2028b"}), 'headers["X-A"]', "found U+2028 at character 2"),
    (bad(id="a\x01"), "id", "no control characters"),
    (bad(id=3), "id", "must be a string or null, not a number (3)"),
    (bad(id="k" * 129), "id", "at most 128 characters long, not 129"),
    (bad(to=["Ada <ada@contoso>"]), "to[0]", "is not one recipient"),
    (bad(to=[{"address": "ada@contoso"}]), "to[0].address", "is not an email address the relay accepts"),
    (bad(to=[7]), "to[0]", "must be a string or an object, not a number (7)"),
    (bad(from_="x"), "from_", "unknown field"),
    (bad(**{"from": "x" * 65 + "@contoso.com"}), "from", "at most 64 characters before the @"),
    (bad(importance="High"), "importance", '"low" or "normal" or "high", not a string ("High")'),
    (bad(headers={f"X-H{i}": "v" for i in range(6)}), "headers", "has 6 entries; at most 5"),
    (
        bad(attachments=[{"name": "a", "contentType": "text/plain", "contentBytes": "YWJj\n"}]),
        "attachments[0].contentBytes",
        "is not standard base64 on one line",
    ),
    (bad(subject="a\ud800"), "subject", "lone UTF-16 surrogate"),
]


@pytest.mark.parametrize(("document", "field", "words"), MESSAGES, ids=[m[1] + ":" + m[2][:30] for m in MESSAGES])
def test_each_violation_names_the_field_and_the_rule_in_words(document: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ContractError) as caught:
        encode_request(document)
    (violation,) = caught.value.violations  # one broken rule, said once
    assert violation.field == field
    assert words in violation.rule
    assert str(violation) == f"{field}: {violation.rule}"
    # No validator jargon, no regular expression: a developer reads the rule, not jsonschema's internals.
    for jargon in ("valid under", "should not be", "(?", "is not of type", "'pattern'"):
        assert jargon not in violation.rule


def test_a_long_value_is_not_echoed_back_whole() -> None:
    with pytest.raises(ContractError) as caught:
        encode_request(bad(to=["secret-" + "x" * 500 + " <nobody>"]))
    assert len(str(caught.value)) < 800 and "x" * 100 not in str(caught.value)


def test_the_queue_url_constructor_names_the_queue_in_the_url() -> None:
    client = MailClient("https://relaystore.queue.core.windows.net/mail-outbox", "account-key")
    queue = client._queue
    assert getattr(queue, "queue_name", None) == "mail-outbox"
    assert getattr(queue, "account_name", None) == "relaystore"


def test_the_client_finds_a_status_record_where_the_relay_writes_it() -> None:
    from mailrelay_client.status import entity_keys

    from shared.status import StatusKey

    for sender, kind, key in [("Alerts@Contoso.com", "id", "order/42#?"), ("a@b.example", "msg", "3f25-04e0")]:
        assert entity_keys(sender, kind, key) == StatusKey(sender.lower(), kind, key).entity_keys()


def test_status_needs_a_table_when_the_client_was_built_from_a_queue_client() -> None:
    from mailrelay_client import MailClient

    client = MailClient.from_queue_client(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status_table="):
        client.status("order-42")


# --- apps: each on its own queue ---------------------------------------------------------------------


APP_NAMES = [
    "billing",
    "hr-portal",
    "a1",
    "default",
    "Billing",
    "retry",
    "poison",
    "retry-poison",
    "a",
    "a--b",
    "b-",
    "1abc",
    "x" * 24,
    "x" * 25,
    "../x",
    "a_b",
    "",
]


def test_the_clients_app_naming_agrees_with_the_relays() -> None:
    from mailrelay_client import app_queue
    from mailrelay_client.client import _app_name
    from mailrelay_client.client import payload_container as client_payload_container
    from mailrelay_client.status import status_table as client_status_table

    from shared import apps
    from shared.payloads import payload_container as relay_payload_container

    for name in APP_NAMES:
        try:
            accepted = _app_name(name) == name
        except ValueError:
            accepted = False
        assert accepted == apps.is_app_name(name), name
        if accepted:
            assert app_queue("mail-outbox", name) == apps.app_queue("mail-outbox", name)
            assert app_queue("q", name) == apps.app_queue("q", name)
            # An app uploads its payloads where the relay reads them for it, and only there.
            assert client_payload_container(name) == relay_payload_container(name)
            # And reads its status records where the relay writes them.
            assert client_status_table(name) == apps.status_table(name)


def test_an_apps_payloads_go_to_its_own_container() -> None:
    conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    own = MailClient.from_connection_string(conn, app="billing")._container()
    outbox = MailClient.from_connection_string(conn)._container()
    assert (own.container_name, outbox.container_name) == ("mail-payloads-billing", "mail-payloads")


def test_a_client_of_an_app_enqueues_on_the_apps_queue_and_the_default_stays_the_outbox() -> None:
    conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    assert getattr(MailClient.from_connection_string(conn)._queue, "queue_name", None) == "mail-outbox"
    billing = MailClient.from_connection_string(conn, app="billing")
    assert billing.app == "billing" and getattr(billing._queue, "queue_name", None) == "mail-outbox-billing"
    other = MailClient.from_connection_string(conn, "relay-q", app="hr-portal")
    assert getattr(other._queue, "queue_name", None) == "relay-q-hr-portal"
    url = MailClient("https://relaystore.queue.core.windows.net/mail-outbox?sv=x&sig=y", app="billing")
    assert getattr(url._queue, "queue_name", None) == "mail-outbox-billing"
    assert "sig=y" in str(getattr(url._queue, "url", ""))  # the SAS stays on the app's queue's URL
    assert MailClient("https://relaystore.queue.core.windows.net/mail-outbox", "key").app == "default"


@pytest.mark.parametrize("app", ["Billing", "retry", "../x", "a"])
def test_a_name_no_app_can_have_is_refused_before_any_queue_is_touched(app: str) -> None:
    with pytest.raises(ValueError, match="declared app's name"):
        MailClient.from_connection_string("UseDevelopmentStorage=true", app=app)
    with pytest.raises(ValueError, match="declared app's name"):
        MailClient("https://relaystore.queue.core.windows.net/mail-outbox", "key", app=app)


def test_an_app_given_twice_in_the_url_and_the_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="already names app 'billing'"):
        MailClient("https://relaystore.queue.core.windows.net/mail-outbox-billing", "key", app="billing")


def test_the_missing_queue_of_an_app_is_named_as_the_apps() -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from mailrelay_client import QueueNotFound

    class Missing(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Sent:
            error = ResourceNotFoundError("The specified queue does not exist.")
            error.error_code = "QueueNotFound"  # type: ignore[attr-defined]
            raise error

    with pytest.raises(QueueNotFound, match="app 'billing''s queue does not exist"):
        MailClient.from_queue_client(Missing(), app="billing").send(REQUEST)


def test_an_apps_status_record_is_found_where_the_relay_writes_it_and_never_another_apps() -> None:
    from mailrelay_client.status import entity_keys, read_status

    from shared.status import StatusKey

    for app in ("default", "billing", "hr-portal"):
        for sender, kind, key in [("Alerts@Contoso.com", "id", "order/42#?"), ("a@b.example", "msg", "3f25-04e0")]:
            expected = StatusKey(sender.lower(), kind, key, app).entity_keys()
            assert entity_keys(sender, kind, key, app) == expected

    class Table:
        def query_entities(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                {"app": "billing", "sender": "a@contoso.com", "key": parameters["key"], "state": "sent"},
                {"app": "hr", "sender": "a@contoso.com", "key": parameters["key"], "state": "dead-lettered"},
                {"sender": "b@contoso.com", "key": parameters["key"], "state": "queued"},  # before apps: default's
            ]

    assert read_status(Table(), "order-42", app="billing") == {
        "app": "billing",
        "sender": "a@contoso.com",
        "key": "order-42",
        "state": "sent",
    }
    assert (read_status(Table(), "order-42") or {}).get("sender") == "b@contoso.com"
    assert read_status(Table(), "order-42", app="payroll") is None


MIME_SCAN = (
    b"From: scanner@contoso.com\r\nTo: ada@contoso.com\r\nCc: bob@contoso.com\r\nSubject: Scan\r\n\r\nYour scan.\r\n"
)


def test_send_mime_refuses_a_mime_whose_headers_name_a_recipient_the_envelope_lacks_before_storing() -> None:
    from mailrelay_client import ContractError

    queue, container = FakeQueue(), FakeContainer()
    client = MailClient.from_queue_client(queue, payloads=container)
    with pytest.raises(ContractError) as caught:
        client.send_mime(MIME_SCAN, "scanner@contoso.com", to=["ada@contoso.com"])
    assert "1 recipient(s)" in str(caught.value) and "bob" not in str(caught.value)
    with pytest.raises(ContractError, match="From header"):
        client.send_mime(MIME_SCAN, "alerts@contoso.com", to=["ada@contoso.com", "bob@contoso.com"])
    assert queue.calls == [] and container.blobs == {}
    client.send_mime(MIME_SCAN, "Scanner@Contoso.com", to=["Ada <ada@contoso.com>", {"address": "bob@contoso.com"}])
    ((text, _),) = queue.calls
    assert container.blobs[decode(text)["mime"]["blob"]] == MIME_SCAN


def test_a_retry_of_send_mime_with_its_id_after_an_ambiguous_enqueue_is_the_very_same_request() -> None:
    """An SMTP device retries after a 451 whose enqueue had happened: the relay must see the same request (the same
    fingerprint: sent once) rather than a second one under the id (refused DuplicateKey)."""
    from azure.core.exceptions import ResourceExistsError

    class Container(FakeContainer):
        def upload_blob(self, name: str, data: Any, length: int | None = None, overwrite: bool = False) -> None:
            if name in self.blobs:
                raise ResourceExistsError("The specified blob already exists.")
            super().upload_blob(name, data, length, overwrite)

    class TookItThenTimedOut(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Sent:
            super().send_message(content, **kwargs)
            raise TimeoutError("the answer never came")

    container, first, second = Container(), TookItThenTimedOut(), FakeQueue()
    to = ["ada@contoso.com", "bob@contoso.com"]
    with pytest.raises(TimeoutError):
        MailClient.from_queue_client(first, payloads=container).send_mime(
            MIME_SCAN, "scanner@contoso.com", to=to, id="s1"
        )
    MailClient.from_queue_client(second, payloads=container).send_mime(MIME_SCAN, "scanner@contoso.com", to=to, id="s1")
    assert first.calls[0][0] == second.calls[0][0]  # byte for byte the same request
    assert len(container.blobs) == 1 and container.deleted == []
    # Another id, or no id, is another mail with a blob of its own, even with the same bytes.
    MailClient.from_queue_client(second, payloads=container).send_mime(MIME_SCAN, "scanner@contoso.com", to=to, id="s2")
    MailClient.from_queue_client(second, payloads=container).send_mime(MIME_SCAN, "scanner@contoso.com", to=to)
    MailClient.from_queue_client(second, payloads=container).send_mime(MIME_SCAN, "scanner@contoso.com", to=to)
    assert len(container.blobs) == 4
