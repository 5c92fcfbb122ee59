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
