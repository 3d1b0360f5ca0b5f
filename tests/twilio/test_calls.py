"""pipecat_rxdrain.twilio.calls: call slots and health."""

from __future__ import annotations

from pipecat_rxdrain.twilio.calls import Admission, CallOutcome, CallRecord, CallRegistry


class _Call:
    def __init__(self, sid):
        self.record = CallRecord(sid, "MZ")

    def refresh(self):
        return self.record


def test_reserved_and_active_never_exceed_max_calls_and_a_call_sid_is_live_once():
    reg = CallRegistry(2)
    assert reg.reserve() is Admission.ADMITTED and reg.reserve() is Admission.ADMITTED
    assert reg.reserve() is Admission.FULL  # two sockets reserved, neither has sent start yet
    assert reg.bind("CA1", _Call("CA1")) is Admission.ADMITTED
    assert reg.bind("CA1", _Call("CA1")) is Admission.DUPLICATE  # the slot is given back
    assert reg.reserve() is Admission.ADMITTED and reg.reserve() is Admission.FULL
    reg.unreserve()
    reg.finish("CA1", reg.active["CA1"].record)
    assert reg.reserve() is Admission.ADMITTED
    reg.shutting_down = True
    assert reg.reserve() is Admission.SHUTTING_DOWN
    assert reg.counters["refused_full"] == 2 and reg.counters["refused_duplicate"] == 1


def test_health_is_degraded_while_the_last_calls_all_failed():
    reg = CallRegistry(5, failing_window=3)
    for i in range(3):
        rec = CallRecord(f"CA{i}", "MZ", outcome=CallOutcome.FAILED)
        assert reg.health()["status"] == "ok"
        reg.finish(rec.call_sid, rec)
    assert reg.health() == {"ok": False, "status": "degraded", "active_calls": 0, "failed_calls": 3}
    reg.finish("CA9", CallRecord("CA9", "MZ"))  # one good call: the process works again
    assert reg.health()["ok"]
