"""The dead-letter queue `<queue>-poison`: read it, show one message, put requests back on the queue.

Two kinds of message end up there (docs/outcomes.md):
- the relay's envelopes, base64 of `{"request", "error": {"code", "message", "hint"}, "attempts", "failedAt"}`,
  written for a permanent failure;
- raw messages the Functions host (or the local host) moved there itself: the message text exactly as it
  was on the main queue, after `maxDequeueCount` failed tries (base64 of a request, or of the relay's
  retry wrapper `{"$retry": {...}, "request": {...}}`), or at once when the text is not base64 at all.
`parse_dead_letter` turns either into one `DeadLetter`, with an error code and a hint in both cases.

Reading without taking: Storage's peek returns at most 32 messages and no way to page further. Beyond
that, `DeadLetterQueue.scan` receives messages in pages of 32 (which hides each for `SCAN_VISIBILITY`
seconds and adds one to its dequeue count, the only way the Storage API offers to reach the next page),
then makes every one visible again at once. Nothing consumes the poison queue, so the dequeue count
there means nothing, and a scan cut short (Ctrl-C) only hides messages until the timeout runs out.

Requeue puts the plain request (envelope or retry wrapper stripped, so the attempt count starts again)
on its app's queue first (the envelope's "app", the retry wrapper's "$retry.app"; none: the outbox, the
default app's: shared/apps.py), and deletes the dead letter only after that succeeded: a failure in between
leaves a duplicate, never a loss (and the request's status record keeps the duplicate from being sent
twice: shared/status.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from shared.apps import DEFAULT_APP, app_queue, is_app_name
from shared.queues import decode, json_object

if TYPE_CHECKING:
    from shared.queues import Overflow

PEEK_LIMIT: Final = 32  # Storage's maximum for peek and for one receive
SCAN_VISIBILITY: Final = 60  # seconds a scanned message stays hidden if the scan dies before restoring it

Form = Literal["envelope", "raw"]

# Where a dead letter names what it keeps in the overflow store (shared/queues.py): the whole envelope of one
# too large for the queue, or the request of a retry wrapper too large for it (shared/retries.py).
STORED: Final = "stored"
STORED_REQUEST: Final = "requestStored"

# Codes for raw messages, which carry no error of the relay's own.
MAX_DEQUEUE: Final = "MaxDequeueCountExceeded"
_MAX_DEQUEUE_HINT: Final = (
    "the Functions host moved this message here after maxDequeueCount (host.json) failed tries: the "
    "relay failed transiently each time (throttling, an outage of Graph, Entra or Key Vault) or the "
    "function crashed; look up the message id in the function's logs, fix the cause, then requeue"
)
_INVALID_ENCODING_HINT: Final = (
    "the queue message is not base64 text, so the host could not decode it: host.json's messageEncoding "
    "is base64 (the Functions default). Send with the relay's client (mailrelay_client.MailClient or "
    "`mailrelay send`), which encodes for you, or base64-encode the UTF-8 JSON yourself"
)


class NotRequeueable(ValueError):
    """The dead letter holds nothing that could be sent: the reason says why."""


class DeadLetterNotFound(LookupError):
    """No message with that id in the dead-letter queue (requeued or deleted meanwhile, or a typo)."""


class AmbiguousKey(DeadLetterNotFound):
    """A key that names several dead letters (one request id refused twice, say): their own ids tell them apart."""


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, whichever form it came in."""

    id: str
    form: Form
    code: str
    message: str
    hint: str
    request: Any  # the request's JSON object when one could be read; else the text as found (or None)
    attempts: int | None = None
    failed_at: str | None = None  # the envelope's failedAt; for raw messages, when the host moved it
    inserted_on: datetime | None = None
    dequeue_count: int | None = None  # of the poison queue; scans add one
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the retry wrapper's lastError
    # Whose queue the request came from (shared/apps.py), as the relay wrote it: the envelope's "app", the retry
    # wrapper's "$retry.app"; a message the host moved from the outbox is the default app's. Requeue puts the
    # request back on that app's queue, so it is judged again by that app's senders and ids.
    app: str = DEFAULT_APP

    @property
    def sender(self) -> str | None:
        sender = self.request.get("from") if isinstance(self.request, dict) else None
        return sender if isinstance(sender, str) else None

    @property
    def key(self) -> str:
        """The request's key, as `mailrelay send` printed it and `mailrelay status` takes it: the request's `id`;
        else the id of the queue message that first carried it (the relay's envelope keeps it as queueMessageId, a
        retry wrapper as originalMessageId); else this dead letter's own id, for a message the host moved as it was
        (its copy on the poison queue has a new id, and nothing of the first one's)."""
        request_id = self.request.get("id") if isinstance(self.request, dict) else None
        if isinstance(request_id, str) and request_id:
            return request_id
        for origin in (self.extra.get("queueMessageId"), self.extra.get("originalMessageId")):
            if isinstance(origin, str) and origin:
                return origin
        return self.id

    def matches(self, key: str) -> bool:
        """Is this the dead letter `key` names: its own id, the queue message id that carried the request, or
        the request's `id` (the key `mailrelay status` takes)?"""
        request_id = self.request.get("id") if isinstance(self.request, dict) else None
        origins = (self.id, self.extra.get("queueMessageId"), self.extra.get("originalMessageId"))
        return key in origins or (isinstance(request_id, str) and key == request_id)

    def requeue_payload(self) -> dict[str, Any]:
        """The plain request to put back on the main queue; NotRequeueable says why there is none."""
        from shared.contract import ContractError, parse_request

        if not is_app_name(self.app):
            raise NotRequeueable(
                f"dead letter {self.id} names no app's queue to go back to (its app is not an app's name): "
                "send the mail again from the app"
            )
        if not isinstance(self.request, dict):
            raise NotRequeueable(
                f"dead letter {self.id} holds no JSON request ({self.code}): there is nothing to send; "
                "fix the sender and send the mail again"
            )
        try:
            parse_request(self.request)
        except ContractError as exc:
            broken = "; ".join(str(v) for v in exc.violations[:3])
            more = f" (and {len(exc.violations) - 3} more)" if len(exc.violations) > 3 else ""
            raise NotRequeueable(
                f"dead letter {self.id} is not a valid send request, so the relay would refuse it again: {broken}{more}"
            ) from None
        from shared.queues import MAX_QUEUE_TEXT, encode

        size = len(encode(self.request))
        if size > MAX_QUEUE_TEXT:
            # Plain JSON the host moved here as it was can be near 64 KiB; base64 adds a third.
            raise NotRequeueable(
                f"dead letter {self.id} holds a request of {size:,} characters once base64-encoded for the queue, "
                f"over Storage's 64 KiB ({MAX_QUEUE_TEXT:,}): send it again from the app, with less content"
            )
        request = dict(self.request)
        send_at = request.get("sendAt")
        if isinstance(send_at, str) and datetime.fromisoformat(send_at) <= datetime.now(UTC):
            # Its time has passed: a requeue means "send it now", and the relay would refuse a sendAt before the
            # moment it is enqueued (SendAtInPast).
            del request["sendAt"]
        return request

    def stored_references(self) -> list[dict[str, Any]]:
        """What this dead letter keeps in the overflow store: removed with it when it is requeued."""
        return [ref for key in (STORED, STORED_REQUEST) if isinstance(ref := self.extra.get(key), dict)]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.id,
            "form": self.form,
            "app": self.app,
            "error": {"code": self.code, "message": self.message, "hint": self.hint},
            "attempts": self.attempts,
            "failedAt": self.failed_at,
            "insertedOn": _iso(self.inserted_on),
            "dequeueCount": self.dequeue_count,
            "sender": self.sender,
            "request": self.request,
            **({"extra": self.extra} if self.extra else {}),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def parse_dead_letter(
    message_id: str, text: str, inserted_on: datetime | None = None, dequeue_count: int | None = None
) -> DeadLetter:
    """Read one poison-queue message text, in either form. Never raises on content: anything unreadable
    is itself the finding."""
    common: dict[str, Any] = {"id": message_id, "inserted_on": inserted_on, "dequeue_count": dequeue_count}
    moved_at = _iso(inserted_on)
    decoded = decode(text)
    if decoded is None:
        # The host moves text it cannot base64-decode straight here, untouched.
        plain = json_object(text)
        message = (
            "the message is plain JSON, not base64: it was sent without the queue's base64 encoding"
            if plain is not None
            else "the message is not base64 text"
        )
        return DeadLetter(
            form="raw",
            code="InvalidEncoding",
            message=message,
            hint=_INVALID_ENCODING_HINT,
            # Plain JSON keeps its object: requeue can then send it properly encoded.
            request=plain if plain is not None else text,
            failed_at=moved_at,
            **common,
        )
    obj = json_object(decoded)
    if obj is None:
        from shared.outcomes import hint_for

        return DeadLetter(
            form="raw",
            code="InvalidRequest",
            message="the message is base64, but of something that is not a JSON object",
            hint=hint_for("InvalidRequest"),
            request=decoded,
            failed_at=moved_at,
            **common,
        )
    if isinstance(obj.get("error"), dict) and "request" in obj:
        error = obj["error"]
        return DeadLetter(
            form="envelope",
            code=str(error.get("code") or "Unknown"),
            message=str(error.get("message") or ""),
            hint=str(error.get("hint") or ""),
            request=obj.get("request"),
            attempts=obj.get("attempts") if isinstance(obj.get("attempts"), int) else None,
            failed_at=str(obj["failedAt"]) if obj.get("failedAt") else moved_at,
            app=_app_of(obj.get("app")),
            # An envelope too large for the queue: its request and full error are in the overflow store.
            extra={
                **({STORED: obj[STORED]} if isinstance(obj.get(STORED), dict) else {}),
                **({"queueMessageId": str(obj["queueMessageId"])} if obj.get("queueMessageId") else {}),
            },
            **common,
        )
    retry = obj.get("$retry")
    stored_request = obj.get(STORED_REQUEST)
    if isinstance(retry, dict) and ("request" in obj or isinstance(stored_request, dict)):
        # The relay's retry wrapper, moved here by the host after maxDequeueCount: unwrap it. A request too
        # large for the wrapper is in the overflow store (`requestStored`): DeadLetterQueue reads it back.
        last_error = retry.get("lastError")
        attempts = retry.get("attempts")
        extra = {k: retry[k] for k in ("firstAttemptAt", "originalMessageId", "lastError") if k in retry}
        if isinstance(stored_request, dict):
            extra[STORED_REQUEST] = stored_request
        return DeadLetter(
            app=_app_of(retry.get("app")),
            form="raw",
            code=MAX_DEQUEUE,
            message=_last_error_text(last_error) or "failed on every try",
            hint=_MAX_DEQUEUE_HINT,
            request=obj.get("request"),
            attempts=attempts if isinstance(attempts, int) else None,
            failed_at=moved_at,
            extra=extra,
            **common,
        )
    return DeadLetter(
        form="raw",
        code=MAX_DEQUEUE,
        message="failed on every try; the host moved the message as it was",
        hint=_MAX_DEQUEUE_HINT,
        request=obj,
        attempts=None,  # the host does not record how often it tried: unknown rather than a guess
        failed_at=moved_at,
        **common,
    )


def _app_of(value: Any) -> str:
    """The app a relay-written envelope or retry wrapper names: none (written before apps, or the default app's
    retry) is the default app. Kept as found otherwise, for the listing; requeue_payload refuses a name that is
    no app's."""
    if value is None:
        return DEFAULT_APP
    return value if isinstance(value, str) else repr(value)[:64]


def _last_error_text(last_error: Any) -> str:
    if isinstance(last_error, dict):
        code, message = last_error.get("code"), last_error.get("message")
        return ": ".join(str(part) for part in (code, message) if part)
    return str(last_error) if last_error else ""


# --- The queues ----------------------------------------------------------------------------------


class PoisonQueueClient(Protocol):
    """The parts of azure.storage.queue.QueueClient used on the poison queue."""

    def peek_messages(self, max_messages: int | None = None, **kwargs: Any) -> Sequence[Any]: ...

    def receive_messages(self, **kwargs: Any) -> Any: ...

    def update_message(self, message: Any, pop_receipt: str | None = None, **kwargs: Any) -> Any: ...

    def delete_message(self, message: Any, pop_receipt: str | None = None, **kwargs: Any) -> None: ...


class MainQueueClient(Protocol):
    def send_message(self, content: Any, **kwargs: Any) -> Any: ...

    def get_queue_properties(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Requeued:
    dead_letter_id: str
    message_id: str  # the new message's id on its app's queue
    app: str = DEFAULT_APP  # whose queue it went back to (app_queue(<outbox>, app))
    key: str = ""  # the dead letter's key (DeadLetter.key), the one `dead-letters list` showed
    new_key: str = ""  # the request's key from now on: its `id`, or else the new message's id


Visit = tuple[bool, bool]  # (consumed: deleted, so not to be made visible again; stop scanning)


@contextlib.contextmanager
def _missing_queue_is_empty() -> Iterator[None]:
    """No poison queue yet means nothing was ever dead-lettered: an empty list, not an error."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        yield
    except ResourceNotFoundError as exc:
        if getattr(exc, "error_code", None) != "QueueNotFound":
            raise


def _text(content: Any) -> str:
    # No decode policy is set on the client, so content is the text as stored.
    return content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content)


UNREADABLE: Final = "Unreadable"


def _parse(message: Any) -> DeadLetter:
    """One poison message as a DeadLetter, whatever its bytes: a letter that cannot be read is shown as
    unreadable, with its id, rather than failing the whole listing (and hiding every other letter)."""
    message_id = str(getattr(message, "id", "?"))
    inserted_on = getattr(message, "inserted_on", None)
    try:
        return parse_dead_letter(
            message_id, _text(message.content), inserted_on, getattr(message, "dequeue_count", None)
        )
    except Exception as exc:  # any content at all must not hide the other letters
        return DeadLetter(
            id=message_id,
            form="raw",
            code=UNREADABLE,
            message=f"the message could not be read ({type(exc).__name__}); it is left as it is",
            hint="inspect it with Azure Storage Explorer or delete it; nothing the relay can send is in it",
            request=None,
            inserted_on=inserted_on if isinstance(inserted_on, datetime) else None,
        )


class DeadLetterQueue:
    """The poison queue, and the queues requeue puts requests back on: the outbox (`main`, the default app's) and,
    through `app_queue(name)`, each declared app's (<outbox>-<name>)."""

    def __init__(
        self,
        poison: PoisonQueueClient,
        main: MainQueueClient,
        overflow: Overflow | None = None,
        app_queue: Callable[[str], MainQueueClient] | None = None,
        owner: str | None = None,
    ) -> None:
        self._poison = poison
        self._main = main
        self._overflow = overflow  # where the relay stored the request of an envelope too large for the queue
        self._app_queue = app_queue
        # An app's own poison queue (<outbox>-<app>-poison): the host moved there what THAT app wrote, as it was,
        # so every letter in it is that app's, whatever app it names inside (a forged name must not send a
        # request back on another app's queue).
        self._owner = owner

    def _queue_of(self, app: str) -> MainQueueClient:
        """Where a letter of `app` goes back to (its name checked by requeue_payload already)."""
        if app == DEFAULT_APP:
            return self._main
        if self._app_queue is None:
            raise NotRequeueable(f"app {app!r}'s queue is not known here: requeue it where the apps' queues are")
        return self._app_queue(app)

    def _read(self, message: Any) -> DeadLetter:
        letter = _parse(message)
        if self._owner is not None:
            letter = replace(letter, app=self._owner)
        refs = letter.stored_references()
        if not refs or self._overflow is None:
            return letter
        try:
            full = json_object(self._overflow.get(refs[0]).decode("utf-8"))
        except Exception as exc:  # the store unreachable, the blob gone or altered: show what is on the queue
            return replace(letter, extra={**letter.extra, "storedError": f"{type(exc).__name__}: {exc}"})
        if full is None:
            return letter
        if STORED_REQUEST in letter.extra:
            return replace(letter, request=full)  # a retry's stored request: the request itself
        error = full.get("error")
        message = str(error.get("message") or letter.message) if isinstance(error, dict) else letter.message
        return replace(letter, request=full.get("request"), message=message)

    def _forget_stored(self, letter: DeadLetter) -> None:
        """Remove what a requeued dead letter kept in the overflow store. Its request is back on the queue
        whole, so a failure here only leaves an unused blob behind, never loses mail."""
        if self._overflow is None:
            return
        for ref in letter.stored_references():
            with contextlib.suppress(Exception):
                self._overflow.delete(ref)

    def main_queue_exists(self) -> bool:
        """Whether the main queue exists (its poison queue may not, until a first dead letter)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._main.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    def peek(self, limit: int = PEEK_LIMIT) -> list[DeadLetter]:
        """The oldest `limit` (at most 32) dead letters, without changing anything."""
        count = max(1, min(limit, PEEK_LIMIT))
        with _missing_queue_is_empty():
            return [self._read(m) for m in self._poison.peek_messages(max_messages=count)]
        return []

    def scan(self, visit: Callable[[Any], Visit] | None = None) -> list[DeadLetter]:
        """Every dead letter, beyond peek's 32 (see the module docstring for the cost).

        `visit(message)` is called with each received message while it is hidden, and says whether it
        consumed (deleted) the message, which is then not made visible again, and whether to stop.
        """
        found: list[DeadLetter] = []
        held: dict[str, Any] = {}  # every received message not consumed: all are made visible again
        seen: set[str] = set()
        try:
            with _missing_queue_is_empty():
                while True:
                    page = list(
                        self._poison.receive_messages(
                            messages_per_page=PEEK_LIMIT, max_messages=PEEK_LIMIT, visibility_timeout=SCAN_VISIBILITY
                        )
                    )
                    # A message seen before means the visibility timeout ran out and the queue came round.
                    fresh = [m for m in page if m.id not in seen]
                    seen.update(m.id for m in page)
                    held.update((m.id, m) for m in page)
                    if not fresh:
                        break
                    if self._visit_page(fresh, found, held, visit):
                        break
        finally:
            self._restore(list(held.values()))
        return found

    def _visit_page(
        self, page: list[Any], found: list[DeadLetter], held: dict[str, Any], visit: Callable[[Any], Visit] | None
    ) -> bool:
        """Read one received page; True when `visit` asked to stop."""
        for message in page:
            found.append(self._read(message))
            if visit is None:
                continue
            consumed, stop = visit(message)
            if consumed:
                del held[message.id]
            if stop:
                return True
        return False

    def _restore(self, held: list[Any]) -> None:
        for message in held:
            try:
                self._poison.update_message(message, pop_receipt=message.pop_receipt, visibility_timeout=0)
            except Exception:  # noqa: S112 - it reappears on its own when the visibility timeout runs out
                continue

    def get(self, message_id: str) -> DeadLetter:
        """The dead letter by its key (the one `mailrelay send` printed and `dead-letters list` shows: the request's
        own `id`, else the id of the queue message that carried it), or by its own id. AmbiguousKey when the key
        names several dead letters (their own ids tell them apart)."""
        # Every letter, to see a key used twice: peek when it reached them all (fewer than its limit), else a scan.
        letters = self.peek()
        if len(letters) >= PEEK_LIMIT:
            letters = self.scan()
        own = [letter for letter in letters if letter.id == message_id]
        if own:
            return own[0]
        found = [letter for letter in letters if letter.matches(message_id)]
        if len(found) > 1:
            ids = ", ".join(letter.id for letter in found)
            raise AmbiguousKey(
                f"the key {message_id} names {len(found)} dead letters: give one's own id instead ({ids}; "
                "`dead-letters list --json` shows each one's id)"
            )
        if not found:
            raise DeadLetterNotFound(f"no dead letter with key or id {message_id} in the poison queue")
        return found[0]

    def requeue(self, message_id: str) -> Requeued:
        """Put one dead letter's request back on the main queue, then delete the dead letter. `message_id`: its key
        or its own id, as get() takes them."""
        letter_id = self.get(message_id).id
        results = self._requeue_where(lambda letter: letter.id == letter_id, stop_after_first=True)
        if not results:
            raise DeadLetterNotFound(f"no dead letter with key or id {message_id} in the poison queue")
        outcome = results[0]
        if isinstance(outcome, NotRequeueable):
            raise outcome
        return outcome

    def requeue_all(self) -> list[Requeued | NotRequeueable]:
        """Requeue every dead letter that holds a valid request; the others stay, each with its reason."""
        return self._requeue_where(lambda _letter: True)

    def _requeue_where(
        self, wanted: Callable[[DeadLetter], bool], stop_after_first: bool = False
    ) -> list[Requeued | NotRequeueable]:
        from azure.core.exceptions import ResourceNotFoundError

        from shared.queues import encode

        results: list[Requeued | NotRequeueable] = []

        def visit(message: Any) -> Visit:
            letter = self._read(message)
            if not wanted(letter):
                return False, False
            try:
                payload = letter.requeue_payload()
                target = self._queue_of(letter.app)
                # Enqueue first, delete second: a failure in between leaves a duplicate, never a loss.
                sent = target.send_message(encode(payload), time_to_live=-1)
            except NotRequeueable as exc:
                results.append(exc)
                return False, stop_after_first
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) != "QueueNotFound":
                    raise
                # The app was removed from MAILRELAY_APPS (and its queue with it): nothing would read it there.
                results.append(
                    NotRequeueable(
                        f"dead letter {letter.id} is app {letter.app!r}'s, whose queue does not exist: declare the "
                        "app again (MAILRELAY_APPS), or send the mail again from another app"
                    )
                )
                return False, stop_after_first
            self._poison.delete_message(message, pop_receipt=message.pop_receipt)
            self._forget_stored(letter)
            request_id = payload.get("id")
            new_key = request_id if isinstance(request_id, str) and request_id else str(sent.id)
            results.append(Requeued(letter.id, str(sent.id), letter.app, letter.key, new_key))
            return True, stop_after_first

        self.scan(visit)
        return results


def open_queues(
    queue_name: str,
    *,
    connection_string: str | None = None,
    queue_url: str | None = None,
    credential: Any = None,
    poison_suffix: str = "-poison",
    app: str | None = None,
) -> DeadLetterQueue:
    """The dead-letter queue of `queue_name` (`<queue_name>-poison`, or with `poison_suffix` "-retry-poison" the
    retry queue's, where the host moves retries it gave up on) on a storage account; requeue goes to the letter's
    app's queue (`<queue_name>-<app>`; the outbox for the default app). With `app`, that app's own poison queue
    (`<queue_name>-<app>-poison`, where the host moves what it could not deliver from the app's queue), every
    letter in it the app's."""
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    from shared.queues import OVERFLOW_CONTAINER, BlobOverflow

    poisoned = app_queue(queue_name, app) if app else queue_name
    if connection_string:
        main = QueueClient.from_connection_string(connection_string, queue_name)
        poison = QueueClient.from_connection_string(connection_string, f"{poisoned}{poison_suffix}")
        container = ContainerClient.from_connection_string(connection_string, OVERFLOW_CONTAINER)

        def of_app(app: str) -> MainQueueClient:
            return QueueClient.from_connection_string(connection_string, app_queue(queue_name, app))

    else:
        assert queue_url is not None
        from urllib.parse import urlsplit, urlunsplit

        main = QueueClient.from_queue_url(queue_url, credential=credential)
        url = urlsplit(queue_url)
        # The poison queue beside it, a SAS query (if any) kept as it is.
        poison_path = app_queue(url.path.rstrip("/"), app) if app else url.path.rstrip("/")
        poison_url = urlunsplit(url._replace(path=poison_path + poison_suffix))
        poison = QueueClient.from_queue_url(poison_url, credential=credential)
        # The same account's blob endpoint: https://<account>.queue.core... -> https://<account>.blob.core...
        account = f"{url.scheme}://{url.netloc}{url.path.rstrip('/').rsplit('/', 1)[0]}"
        container = ContainerClient(account.replace(".queue.", ".blob.", 1), OVERFLOW_CONTAINER, credential=credential)

        def of_app(app: str) -> MainQueueClient:
            # The app's queue beside the outbox, a SAS query (if any) kept as it is.
            path = app_queue(url.path.rstrip("/"), app)
            return QueueClient.from_queue_url(urlunsplit(url._replace(path=path)), credential=credential)

    return DeadLetterQueue(poison, main, BlobOverflow(container), of_app, owner=app)
