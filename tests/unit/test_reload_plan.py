"""The reload plan (gateway/reload.py), pure: which poll groups start, stop, restart or are left alone."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.reload import groups, plan


def kind_of(protocol: str) -> str:
    return "subscribing" if protocol == "opcua" else "polling"


def inst(endpoint: str, protocol: str = "modbus_tcp", digest: str = "a", status: str = "in_service") -> dict[str, Any]:
    return {"endpoint": endpoint, "protocol": protocol, "digest": digest, "status": status, "points": {}}


def manifest(settings: dict[str, str] | None = None, **instruments: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings or {"mqtt": "1"}, "instruments": instruments}


def test_an_added_instrument_on_a_new_endpoint_starts_one_poller_and_keeps_the_others() -> None:
    old = manifest(A=inst("tcp:1"), B=inst("tcp:2"), U=inst("", "opcua"))
    new = manifest(A=inst("tcp:1"), B=inst("tcp:2"), U=inst("", "opcua"), C=inst("tcp:3"))
    p = plan(old, new, kind_of)
    assert p.added == ("C",)
    assert p.start == ("poll tcp:3",)
    assert p.keep == ("poll tcp:1", "poll tcp:2", "subscribe U")
    assert p.restart == p.stop == p.refused == ()


def test_a_change_restarts_only_its_group_and_a_shared_endpoint_restarts_with_a_new_neighbour() -> None:
    old = manifest(A=inst("bus"), B=inst("bus"), C=inst("tcp:3"), D=inst("tcp:4"), U=inst("", "opcua"))
    new = manifest(A=inst("bus"), B=inst("bus"), E=inst("bus"), C=inst("tcp:3", digest="b"), U=inst("", "opcua"))
    p = plan(old, new, kind_of)
    assert p.restart == ("poll bus", "poll tcp:3")
    assert p.stop == ("poll tcp:4",)
    assert p.keep == ("subscribe U",)
    assert (p.added, p.removed, p.changed) == (("E",), ("D",), ("C",))


def test_retiring_an_instrument_stops_its_poller() -> None:
    p = plan(manifest(A=inst("tcp:1")), manifest(A=inst("tcp:1", status="retired")), kind_of)
    assert p.stop == ("poll tcp:1",)
    assert p.changed == ("A",)


def test_a_settings_change_is_refused_with_one_line_per_section() -> None:
    p = plan(manifest({"mqtt": "1", "store": "1"}), manifest({"mqtt": "2", "store": "1"}), kind_of)
    (line,) = p.refused
    assert "`mqtt` changed" in line
    assert "restart" in line


_instrument = st.builds(inst, st.sampled_from(["tcp:1", "tcp:2", "bus", ""]),
                        st.sampled_from(["modbus_tcp", "opcua"]), st.sampled_from(["a", "b"]),
                        st.sampled_from(["in_service", "retired"]))
_manifest = st.builds(lambda d: manifest(**d), st.dictionaries(st.sampled_from(["A", "B", "C", "D"]), _instrument))


@settings(max_examples=300, deadline=None)
@given(_manifest, _manifest)
def test_every_group_has_exactly_one_fate_and_unchanged_groups_are_kept(old: dict, new: dict) -> None:
    p = plan(old, new, kind_of)
    fates = [*p.start, *p.stop, *p.restart, *p.keep]
    og, ng = groups(old, kind_of), groups(new, kind_of)
    assert sorted(fates) == sorted(set(og) | set(ng))  # each group once
    for key in p.keep:
        assert og[key] == ng[key]
        assert all(old["instruments"][i] == new["instruments"][i] for i in og[key])
    assert set(p.start) == set(ng) - set(og)
    assert set(p.stop) == set(og) - set(ng)
    assert plan(old, old, kind_of).restart == ()  # the same configuration touches nothing
    assert set(plan(old, old, kind_of).keep) == set(og)


def test_the_rules_stage_keeps_unchanged_points_drops_removed_and_adopts_new(tmp_path) -> None:
    import dataclasses

    from gateway.registry import load_config
    from gateway.rules_stage import RulesStage
    from tests.helpers import three_meters, write_config

    cfg = load_config(write_config(tmp_path / "cfg", three_meters((15020, 15021, 15022)), store=tmp_path / "gw.db"))
    pm, ft, cems = cfg.instruments
    rules = RulesStage(cfg.instruments, now_ms=1_700_000_000_000)
    kept = rules._points[("PM-01", "voltage_l1")]
    renamed = dataclasses.replace(pm, model=pm.model.model_copy(update={"name": "renamed"}))
    assert rules.rebind(renamed) == set()  # same rules: every point keeps its state
    assert rules._points[("PM-01", "voltage_l1")] is kept
    assert kept.instrument is renamed
    fewer = dataclasses.replace(pm, points=pm.points[:1])
    assert rules.rebind(fewer) == set()
    assert [k for k in rules.points() if k[0] == "PM-01"] == [("PM-01", pm.points[0].name)]
    rules.drop_instrument("FT-01")
    assert not [k for k in rules.points() if k[0] == "FT-01"]
    assert rules.checkpoint()  # the round-robin cycle still works
    other = RulesStage([ft], now_ms=1_700_000_000_000)
    rules.adopt(other, {("FT-01", "volume_flow")})
    assert [k for k in rules.points() if k[0] == "FT-01"] == [("FT-01", "volume_flow")]
    assert cems.id in {k[0] for k in rules.points()}


async def test_a_restarted_writer_takes_the_changes_up_to_the_configuration_it_was_built_from() -> None:
    from types import SimpleNamespace

    from gateway.reload import RulesChange, writer_ready

    a, b, c = object(), object(), object()
    changes = [RulesChange(0, a, (), (), ()), RulesChange(5, b, (), (), ()), RulesChange(9, c, (), (), ())]  # type: ignore[arg-type]
    gw = SimpleNamespace(rules_changes=list(changes))
    writer_ready(gw, object())  # built from a configuration older than every pending change: all still to do
    assert gw.rules_changes == changes
    writer_ready(gw, b)  # built from b: the changes to a and b are in it, the change to c is still to apply
    assert gw.rules_changes == changes[2:]
    assert changes[0].done.done()
    assert changes[1].done.done()
    assert not changes[2].done.done()


async def test_a_sighup_while_starting_is_remembered_and_reloaded_once_the_reloader_listens() -> None:
    import os
    import signal
    from types import SimpleNamespace

    from gateway import reload

    before = signal.getsignal(signal.SIGHUP)
    try:
        reload.hold_sighup()
        os.kill(os.getpid(), signal.SIGHUP)  # the process survives: remembered, not the default action
        await asyncio.sleep(0)
        gw = SimpleNamespace(config=None)
        r = reload.Reloader(gw, None, None, None, lambda: None)  # type: ignore[arg-type]
        with r.on_sighup():
            assert r._wanted.is_set()  # one reload asked for
        os.kill(os.getpid(), signal.SIGHUP)  # after the reloader stopped: held again, harmless
        await asyncio.sleep(0)
        assert reload._held_sighup == [True]
    finally:
        reload._held_sighup.clear()
        signal.signal(signal.SIGHUP, before)
