"""`mailrelay local`'s options reach the stack: --instances and --read-access/--no-read-access, through
run_foreground to LocalStack (a fake here: the real one is started by tests/e2e/test_stack_instances.py),
and the banner says what they mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack import stack as stack_module
from devstack.stack import StackError, sent_items_line
from shared.cli import local, main


class FakeStack:
    """Records how run_foreground built it; starts at once; reports a host gone after the banner."""

    made: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.read_access = kwargs["read_access"]
        self.allowed_senders, self.exchange_scope, self.mailboxes = args[0], args[1], args[2]
        self.queue_endpoint = "http://127.0.0.1:1/devstoreaccount1"
        self.emulator_url, self.ca_cert_path = "https://127.0.0.1:2", "/tmp/ca.pem"
        self.pids = {"azurite": 1, "emulator": 2, **{f"host-{i}": 10 + i for i in range(1, kwargs["instances"] + 1)}}
        self.stopped = False
        FakeStack.made.append({"args": args, **kwargs})

    def start(self) -> FakeStack:
        return self

    def state(self) -> dict[str, Any]:
        return {"pid": 0}

    def app_state(self) -> list[dict[str, Any]]:
        return [
            {"name": a["name"], "queue": f"mail-outbox-{a['name']}", "senders": a["senders"]}
            for a in self.kwargs.get("apps", [])
        ]

    def unknown_outcome(self) -> str:
        return "resend"

    def dead_part(self) -> str:
        return "host-1"  # ends run_foreground's loop right after the banner

    def stop(self) -> None:
        self.stopped = True


class FakeConsole:
    url = "http://127.0.0.1:3/?token=x"

    def stop(self) -> None:
        pass


@pytest.fixture
def fake_stack(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    FakeStack.made = []
    monkeypatch.setattr(stack_module, "LocalStack", FakeStack)
    monkeypatch.setattr(stack_module, "start_console", lambda stack: FakeConsole())
    monkeypatch.setattr(local, "_import_devstack", lambda: stack_module)
    return FakeStack.made


def test_instances_and_read_access_reach_the_stack_and_the_banner(
    fake_stack: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state.json")
    # The fake reports host-1 gone right after the banner: run_foreground stops the stack and returns 1.
    assert main(["local", "--instances", "3", "--no-read-access", "--state-file", state]) == 1
    assert main(["local", "--state-file", state]) == 1
    assert [(made["instances"], made["read_access"]) for made in fake_stack] == [(3, False), (1, True)]
    out = capsys.readouterr().out
    first, second = out.split("mailrelay local: ready")[1:]
    assert "starting Azurite, the emulator and 3 local hosts" in out
    assert "host instances   3 on these queues" in first
    assert "host-3 13" in first
    assert "retry queue      mail-outbox-retry (the relay's own; dead letters: mail-outbox-retry-poison)" in first
    assert (
        "Sent Items       not readable (--no-read-access): an unknown send follows SEND_UNKNOWN_OUTCOME=resend" in first
    )
    assert "host instances   1 on these queues" in second
    assert "Sent Items       readable (Application Mail.Read)" in second


@pytest.mark.parametrize("value", ["0", "9", "-1"])
def test_instances_out_of_range_is_a_usage_error_before_anything_starts(
    fake_stack: list[dict[str, Any]], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["local", "--instances", value]) == 2
    assert fake_stack == []
    assert "--instances takes 1 to 8" in capsys.readouterr().err


def test_instances_must_be_a_number(fake_stack: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "--instances", "two"]) == 2
    assert fake_stack == []
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_the_banner_says_what_each_read_access_means() -> None:
    granted = sent_items_line(True, "resend")
    assert "looked up there by its mark before any second send" in granted
    resend = sent_items_line(False, "resend")
    assert "SEND_UNKNOWN_OUTCOME=resend" in resend and "may arrive twice" in resend
    deadletter = sent_items_line(False, "deadletter")
    assert "SEND_UNKNOWN_OUTCOME=deadletter" in deadletter and "never sent twice" in deadletter


@pytest.mark.parametrize("instances", [0, -2, True, 1.5])
def test_the_stack_refuses_a_count_of_instances_that_is_not_one_or_more(instances: Any) -> None:
    with pytest.raises(StackError, match="instances must be a whole number"):
        stack_module.LocalStack(instances=instances)


def test_host_instances_are_numbered_from_one() -> None:
    stack = stack_module.LocalStack(instances=2)
    assert [stack.host_name(i) for i in (1, 2)] == ["host-1", "host-2"]
    for wrong in (0, 3):
        with pytest.raises(StackError, match="numbered 1 to 2"):
            stack.host_name(wrong)


def test_each_app_flag_declares_an_app_whose_senders_join_the_exchange_scope_and_the_banner(
    fake_stack: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state.json")
    argv = ["local", "--state-file", state, "--mailbox", "hr@contoso.com"]
    argv += ["--app", "billing=billing@contoso.com, invoices@contoso.com", "--app", "hr=hr@contoso.com"]
    assert main(argv) == 1
    (made,) = fake_stack
    assert made["apps"] == [
        {"name": "billing", "senders": ["billing@contoso.com", "invoices@contoso.com"]},
        {"name": "hr", "senders": ["hr@contoso.com"]},
    ]
    # The apps' senders are in the Exchange scope by default, except one --mailbox puts outside it.
    assert made["args"][1] == ["alerts@contoso.com", "billing@contoso.com", "invoices@contoso.com"]
    out = capsys.readouterr().out
    assert "app billing      queue mail-outbox-billing as billing@contoso.com, invoices@contoso.com" in out
    assert "`mailrelay send --app hr`" in out


def test_no_app_flag_declares_none_and_the_banner_says_the_outbox_is_the_one_app(
    fake_stack: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["local", "--state-file", str(tmp_path / "s.json")]) == 1
    assert fake_stack[0]["apps"] == []
    assert "none declared: the outbox is the one app" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("billing", "NAME=SENDER"),
        ("=billing@contoso.com", "NAME=SENDER"),
        ("billing=", "NAME=SENDER"),
        ("billing=not-an-address", "--app billing: not an email address: 'not-an-address'"),
    ],
)
def test_a_malformed_app_flag_is_a_usage_error_before_anything_starts(
    fake_stack: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, says: str
) -> None:
    assert main(["local", "--state-file", str(tmp_path / "s.json"), "--app", flag]) == 2
    assert fake_stack == []
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        ([{"name": "Billing", "senders": ["b@contoso.com"]}], "names app 'Billing' wrongly"),
        ([{"name": "retry", "senders": ["b@contoso.com"]}], "reserved"),
        ([{"name": "b1", "senders": ["b@contoso.com"]}, {"name": "b1", "senders": ["c@contoso.com"]}], "twice"),
        ([{"name": "billing", "senders": ["b@contoso.com"], "quota": 3}], "unknown field 'quota'"),
        ([{"name": "billing", "senders": []}], "no senders"),
    ],
)
def test_the_stack_refuses_a_declaration_the_relay_would_refuse_in_its_words(apps: Any, says: str) -> None:
    with pytest.raises(StackError, match="MAILRELAY_APPS") as caught:
        stack_module.LocalStack(apps=apps)
    assert says in str(caught.value)


def test_a_refused_declaration_ends_mailrelay_local_with_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_import_devstack", lambda: stack_module)
    assert main(["local", "--state-file", str(tmp_path / "s.json"), "--app", "retry=r@contoso.com"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_the_apps_senders_join_the_allow_list_and_the_scope_and_each_app_has_its_queue() -> None:
    stack = stack_module.LocalStack(
        allowed_senders=["alerts@contoso.com"],
        mailboxes=["hr@contoso.com"],
        queue_name="relay-q",
        apps=[
            {"name": "billing", "senders": ["Billing@contoso.com", "alerts@contoso.com"]},
            {"name": "hr", "senders": ["hr@contoso.com"]},
        ],
    )
    assert stack.allowed_senders == ["alerts@contoso.com", "Billing@contoso.com", "hr@contoso.com"]
    assert stack.exchange_scope == ["alerts@contoso.com", "Billing@contoso.com"]  # hr: outside, as --mailbox says
    assert stack.app_queue("billing") == "relay-q-billing" and stack.app_queue("default") == "relay-q"
    assert stack.app_state() == [
        {"name": "billing", "queue": "relay-q-billing", "senders": ["Billing@contoso.com", "alerts@contoso.com"]},
        {"name": "hr", "queue": "relay-q-hr", "senders": ["hr@contoso.com"]},
    ]


def test_a_sender_two_apps_share_is_one_mailbox_in_the_scope() -> None:
    stack = stack_module.LocalStack(
        apps=[
            {"name": "billing", "senders": ["orders@contoso.com"]},
            {"name": "bulk", "senders": ["Orders@contoso.com"]},
        ],
        exchange_scope=["orders@contoso.com", "Orders@contoso.com", "alerts@contoso.com"],
    )
    assert stack.exchange_scope == ["orders@contoso.com", "alerts@contoso.com"]
    assert stack.allowed_senders == ["alerts@contoso.com", "orders@contoso.com"]
