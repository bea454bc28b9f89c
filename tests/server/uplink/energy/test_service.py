"""The energy service against real HTTPS platform simulators, with readings put straight into its replica
and a driven clock: values from the KPI code, flags, both variants, outages, rejections, consistency."""

from __future__ import annotations

import logging

import pytest

from greenmine.server.store.replica import SeriesReplica
from greenmine.server.uplink.energy.service import EnergyService
from greenmine.simulators.energy_platform import DECRYPT_FAILED, EnergyPlatformSim
from tests.server.uplink.energy.conftest import (
    CODE_KGCE, CODE_M1, CODE_SITE, ENTERPRISE, PASSWORD, SECRET, SITE, Clock, centre, energy_doc, fill, local,
    meter_reads, server_cfg,
)
from tests.support.services import wait_for

DAY0 = local("2026-11-30 00:00:00")
DAY1 = local("2026-12-01 00:00:00")


@pytest.fixture
def sims(tmp_path):
    started = []

    def make(profile: str, **kw) -> EnergyPlatformSim:
        sim = EnergyPlatformSim(profile=profile, tls_dir=tmp_path / "tls", **kw).start()
        started.append(sim)
        return sim

    yield make
    for s in started:
        s.stop()


def build(tmp_path, centres, clock, **kw) -> tuple[EnergyService, SeriesReplica]:
    cfg = server_cfg(tmp_path, energy_doc(tmp_path, centres, **kw))
    replica = SeriesReplica(tmp_path / "energy-replica.sqlite")
    return EnergyService(cfg, replica, clock=clock), replica


def drain(svc: EnergyService, name: str) -> None:
    while svc.send_once(name):
        pass


def day_of_reads(svc, replica, **kw) -> None:
    fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY1 + 600, kw=120.0, **kw)
         + meter_reads("meter-2", DAY0 - 3600, DAY1 + 600, kw=30.0, base=50.0, **kw), svc)


def test_day_of_15_min_day_and_month_records_at_two_centres(tmp_path, sims):
    a = sims("variant-a")
    b = sims("variant-a-sm4", secret_key=SECRET)
    clock = Clock(DAY0 - 600)
    svc, replica = build(tmp_path, [centre("dc1", a, "variant-a"), centre("dc2", b, "variant-a-sm4")], clock)
    try:
        svc.produce_due()  # the cursors start at the periods containing now
        day_of_reads(svc, replica)
        clock.t = DAY1 + 300  # every slot of the day closed and 120 s later; the day and month not yet
        svc.produce_due()
        clock.t = DAY1 + 1200
        svc.produce_due()
        for name in ("dc1", "dc2"):
            drain(svc, name)
        kpis = {(v.kpi, v.subject): v for v in svc.kpi_store.values(SITE, "energy_kwh_daily", DAY0, DAY0 + 1)}
        kpis = {(v.kpi, v.subject): v for v in svc.kpi_store.values(SITE, "energy_kwh_daily", DAY0, DAY0 + 1)}
        for sim in (a, b):
            recs = {k: v for k, v in sim.records.items() if k[0] == ENTERPRISE}
            slots = sorted((k, v) for k, v in recs.items() if k[1] == CODE_M1 and k[2] == 0 and k[3].startswith("2026-11-30"))
            assert len(slots) == 96, len(slots)
            assert slots[0][0][3] == "2026-11-30 00:00:00" and slots[-1][0][3] == "2026-11-30 23:45:00"
            assert all(abs(float(v.value) - 30.0) < 1e-3 for _, v in slots)  # 120 kW for 15 min
            day = recs[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")]
            assert float(day.value) == pytest.approx(kpis[("energy_kwh_daily", "meter-1")].value, abs=5e-4)
            assert sum(float(v.value) for _, v in slots) == pytest.approx(float(day.value), abs=96 * 5e-4)
            site_day = recs[(ENTERPRISE, CODE_SITE, 1, "2026-11-30 00:00:00")]
            assert float(site_day.value) == pytest.approx(150.0 * 24, abs=1e-3)
            kgce = recs[(ENTERPRISE, CODE_KGCE, 1, "2026-11-30 00:00:00")]
            assert float(kgce.value) == pytest.approx(150.0 * 24 * 0.1229 / 1000, abs=1e-6)
            month = recs[(ENTERPRISE, CODE_M1, 2, "2026-11-01 00:00:00")]
            assert float(month.value) == pytest.approx(float(day.value) + 120.0, abs=1e-2)  # and the hour before
            assert day.input_type == 4 and day.scope == 4
            assert sim.duplicates == 0
        # the valid flag as each profile encodes it: variant-a true/false, variant-a-sm4 "0" valid / "1" invalid
        assert a.records[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")].valid is True
        assert b.records[(ENTERPRISE, CODE_M1, 1, "2026-11-30 00:00:00")].valid == "0"
        assert a.records[(ENTERPRISE, CODE_M1, 2, "2026-11-01 00:00:00")].valid is False  # one day of thirty
        assert b.records[(ENTERPRISE, CODE_M1, 2, "2026-11-01 00:00:00")].valid == "1"
        assert svc.snapshot()["dc1"]["depth"] == 0 and svc.snapshot()["dc2"]["depth"] == 0
    finally:
        svc.close()
        replica.close()


def test_incomplete_period_is_flagged_or_held_as_the_profile_says(tmp_path, sims):
    a = sims("variant-a")
    b = sims("variant-b", password=PASSWORD)
    clock = Clock(DAY0 - 600)
    svc, replica = build(tmp_path, [centre("flag", a, "variant-a"), centre("hold", b, "variant-b")], clock)
    try:
        svc.produce_due()
        # 80 % of the reads in the first 15 minutes (12 of 15), all of them afterwards
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 3600,
                                  skip=lambda ts: DAY0 <= ts < DAY0 + 900 and int(ts - DAY0) // 60 in (3, 6, 9)), svc)
        clock.t = DAY0 + 1800 + 300
        svc.produce_due()
        drain(svc, "flag")
        drain(svc, "hold")
        first = (ENTERPRISE, CODE_M1, 0, "2026-11-30 00:00:00")
        second = (ENTERPRISE, CODE_M1, 0, "2026-11-30 00:15:00")
        assert a.records[first].valid is False and a.records[second].valid is True
        assert first not in b.records and b.records[second].valid == "1"
        assert svc.held >= 1
        kinds = [e[2] for e in svc.state.events()]
        assert "held" in kinds and "incomplete" in kinds
    finally:
        svc.close()
        replica.close()


def test_one_centre_down_the_other_is_not_delayed_and_gets_nothing_twice(tmp_path, sims):
    up = sims("variant-a")
    down = sims("variant-a")
    clock = Clock(DAY0 - 600)
    svc, replica = build(tmp_path, [centre("up", up, "variant-a"), centre("down", down, "variant-a")], clock)
    svc.start()
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 7200), svc)
        down.down()
        clock.t = DAY0 + 3600 + 300  # a simulated hour of slots closes while "down" is down
        # 23:45 (the slot the cursor started in) to 00:45: five slots of two items, and Nov 29's three day items
        wait_for(lambda: len(up.records) == 5 * 2 + 3, timeout_s=10, what="the hour at the up centre")
        wait_for(lambda: svc.snapshot()["up"]["depth"] == 0, timeout_s=5, what="the up centre's acks committed")
        assert svc.snapshot()["down"]["depth"] == 13 and svc.counters["down"].failed >= 1
        assert svc.snapshot()["down"]["oldest_age_s"] > 0
        down.up()
        wait_for(lambda: svc.snapshot()["down"]["depth"] == 0, timeout_s=10, what="the backlog at the returned centre")
        assert set(down.records) == set(up.records)
        assert down.duplicates == 0 and up.duplicates == 0
    finally:
        svc.stop()
        replica.close()


def test_wrong_key_decryption_error_logged_once_record_kept(tmp_path, sims, caplog):
    sim = sims("variant-a-sm4", secret_key=SECRET)
    clock = Clock(DAY0 - 600)
    wrong = "00112233445566778899aabbccddeeff"
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a-sm4", secret_key=wrong)], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 3600), svc)
        clock.t = DAY0 + 1800 + 300
        svc.produce_due()
        with caplog.at_level(logging.DEBUG, logger="greenmine.server.uplink.energy.service"):
            for _ in range(3):
                svc.state.failed("dc", [r.id for r in svc.state.due("dc", 1e18, 100, (0, 1, 2))], 0.0, "reset", False)
                assert svc.send_once("dc") == 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and DECRYPT_FAILED in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        assert sim.records == {} and ("1", DECRYPT_FAILED) in sim.state.errors
        snap = svc.snapshot()["dc"]
        kept = len(svc.state.records(SITE))
        assert kept == 9  # three slots of two items and Nov 29's three day items: none lost
        assert snap["depth"] == kept and snap["rejected"] == 3 * kept and DECRYPT_FAILED in snap["last_error"]
        # the right key: the same records are accepted
        svc.clients["dc"].centre = svc.clients["dc"].centre.model_copy(update={"secret_key": None})
        svc.forget("dc", svc.enterprises[SITE])
        svc.state.failed("dc", [r.id for r in svc.state.due("dc", 1e18, 100, (0, 1, 2))], 0.0, "reset", False)
        drain(svc, "dc")
        assert len(sim.records) == kept and svc.snapshot()["dc"]["depth"] == 0
    finally:
        svc.close()
        replica.close()


def test_variant_b_token_expiry_mid_stream_renews_and_resends(tmp_path, sims):
    sim = sims("variant-b", password=PASSWORD)
    clock = Clock(DAY0 - 600)
    svc, replica = build(tmp_path, [centre("yn", sim, "variant-b")], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 7200), svc)
        clock.t = DAY0 + 900 + 300
        svc.produce_due()
        drain(svc, "yn")
        m1 = lambda: sorted(k[3] for k in sim.records if k[1] == CODE_M1 and k[2] == 0)  # noqa: E731
        assert sim.state.tokens_issued == 1 and m1() == ["2026-11-29 23:45:00", "2026-11-30 00:00:00"]
        assert (ENTERPRISE, CODE_M1) in sim.state.items_registered
        sim.fault("expire_token")  # the platform forgets every token
        clock.t = DAY0 + 3600 + 300
        svc.produce_due()
        drain(svc, "yn")
        assert sim.state.unauthorized == 1 and sim.state.tokens_issued == 2
        assert len(m1()) == 5 and sim.duplicates == 0
        assert svc.snapshot()["yn"]["depth"] == 0
    finally:
        svc.close()
        replica.close()


def test_day_month_mismatch_over_5_percent_is_a_consistency_failure(tmp_path, sims, caplog):
    """Reads of Nov 29's afternoon arrive late (an agent's outbox after an outage), after that day's record
    was sent: the month total has them, the day records do not."""
    sim = sims("variant-a")
    prev = DAY0 - 86400
    clock = Clock(prev - 600)
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a")], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", prev - 3600, prev + 12 * 3600), svc)
        clock.t = DAY0 + 120 + 3600  # close_delay_s + late_data_wait_s: the site has been silent since noon
        svc.produce_due()  # Nov 29's records, from the morning's reads only
        fill(replica, meter_reads("meter-1", prev + 12 * 3600, DAY1 + 600, base=1000.0 + 120 * 13), svc)
        clock.t = DAY1 + 300
        with caplog.at_level(logging.WARNING, logger="greenmine.server.uplink.energy.service"):
            svc.produce_due()
        assert svc.consistency_failures >= 1
        events = [e for e in svc.state.events(100) if e[2] == "consistency"]
        assert any(CODE_SITE in e[3] for e in events), events
        assert any("consistency" in r.getMessage() for r in caplog.records)
    finally:
        svc.close()
        replica.close()


def test_month_matching_its_days_is_consistent(tmp_path, sims):
    sim = sims("variant-a")
    clock = Clock(DAY0 - 600)
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a")], clock)
    try:
        svc.produce_due()
        day_of_reads(svc, replica)
        clock.t = DAY1 + 300
        svc.produce_due()
        assert svc.consistency_failures == 0
    finally:
        svc.close()
        replica.close()


def test_a_closed_period_waits_for_the_streams_backlog(tmp_path, sims):
    """After a restart the broker redelivers what the role missed: a closed slot is not produced until a read after
    its end has arrived, or late_data_wait_s has passed (then it goes out with what arrived, flagged)."""
    sim = sims("variant-a")
    clock = Clock(DAY0 - 60)
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a")], clock, late_data_wait_s=1800)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 600), svc)  # the backlog stops at 00:10
        clock.t = DAY0 + 900 + 300
        svc.produce_due()  # Nov 29's day and its 23:45 slot, whose reads are all there
        slot0 = lambda: [r for r in svc.state.records(SITE, DAY0, DAY0 + 1, stat_type=0)]  # noqa: E731
        assert slot0() == []  # the 00:00 slot is closed, but its closing read has not come
        fill(replica, meter_reads("meter-1", DAY0 + 660, DAY0 + 960, base=1000.0 + 120 * 4260 / 3600), svc)
        assert svc.produce_due() == 2  # now it has: the slot's two items
        clock.t = DAY0 + 1800 + 120 + 1800  # the 00:15 slot: no read after it, and late_data_wait_s is over
        assert svc.produce_due() == 2
        recs = {(r.code, r.period_start): r for r in svc.state.records(SITE, stat_type=0)}
        assert recs[(CODE_M1, DAY0)].complete and recs[(CODE_M1, DAY0)].value == pytest.approx(30.0, abs=1e-3)
        assert not recs[(CODE_M1, DAY0 + 900)].complete
    finally:
        svc.close()
        replica.close()


def test_timeouts_refusals_and_tls_verification(tmp_path, sims):
    sim = sims("variant-a")
    clock = Clock(DAY0 - 60)
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a", read_timeout_s=0.3),
                                    {"name": "nocaf", "url": sim.url, "profile": "variant-a"}], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 1200), svc)
        clock.t = DAY0 + 900 + 300
        svc.produce_due()
        sim.fault("timeout")
        assert svc.send_once("dc") == 0 and "timed out" in svc.snapshot()["dc"]["last_error"]
        sim.fault("refuse")
        svc.state.failed("dc", [r.id for r in svc.state.due("dc", 1e18, 100, (0, 1, 2))], 0.0, "reset", False)
        assert svc.send_once("dc") == 0 and "HTTP 503" in svc.snapshot()["dc"]["last_error"]
        sim.fault(None)
        svc.state.failed("dc", [r.id for r in svc.state.due("dc", 1e18, 100, (0, 1, 2))], 0.0, "reset", False)
        drain(svc, "dc")
        assert svc.snapshot()["dc"]["depth"] == 0 and sim.duplicates == 0
        # no ca_file: the system's CAs do not know the simulator's test CA, so verification refuses it
        assert svc.send_once("nocaf") == 0
        assert "TLS" in svc.snapshot()["nocaf"]["last_error"] and "CERTIFICATE_VERIFY_FAILED" in svc.snapshot()["nocaf"]["last_error"]
    finally:
        svc.close()
        replica.close()


def _client_cert(folder):
    """A client CA and a client certificate it signed (for mutual TLS)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ENTERPRISE)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "client-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder / "client-ca.pem", folder / "client.pem", folder / "client.key"


def test_client_certificate_for_a_centre_that_requires_one(tmp_path, sims):
    client_ca, cert, key = _client_cert(tmp_path / "client")
    sim = sims("variant-a", client_ca=client_ca)
    clock = Clock(DAY0 - 60)
    svc, replica = build(tmp_path, [centre("mtls", sim, "variant-a", client_cert=str(cert), client_key=str(key)),
                                    centre("nocert", sim, "variant-a")], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", DAY0 - 3600, DAY0 + 1200), svc)
        clock.t = DAY0 + 900 + 300
        svc.produce_due()
        drain(svc, "mtls")
        assert svc.snapshot()["mtls"]["depth"] == 0 and sim.records
        assert svc.send_once("nocert") == 0 and svc.snapshot()["nocert"]["depth"] > 0  # the centre refuses the handshake
    finally:
        svc.close()
        replica.close()


def test_year_record_is_the_sum_of_its_month_records(tmp_path, sims):
    """statType 3: at the year's close each item's year record is the sum of the month records it sent, flagged
    invalid while months are missing (here the uplink ran in December only)."""
    sim = sims("variant-a")
    dec31, jan1 = local("2026-12-31 00:00:00"), local("2027-01-01 00:00:00")
    clock = Clock(dec31 - 600)
    svc, replica = build(tmp_path, [centre("dc", sim, "variant-a")], clock)
    try:
        svc.produce_due()
        fill(replica, meter_reads("meter-1", dec31 - 3600, jan1 + 600, kw=120.0)
             + meter_reads("meter-2", dec31 - 3600, jan1 + 600, kw=30.0, base=50.0), svc)
        clock.t = jan1 + 300
        svc.produce_due()
        drain(svc, "dc")
        recs = {k: v for k, v in sim.records.items() if k[0] == ENTERPRISE}
        for code in (CODE_M1, CODE_SITE):
            month = recs[(ENTERPRISE, code, 2, "2026-12-01 00:00:00")]
            year = recs[(ENTERPRISE, code, 3, "2026-01-01 00:00:00")]
            assert float(year.value) == pytest.approx(float(month.value), abs=1e-9)
            assert year.valid is False  # eleven months without a record
        assert float(recs[(ENTERPRISE, CODE_SITE, 3, "2026-01-01 00:00:00")].value) == pytest.approx(150.0 * 25, abs=1e-2)
        # the kgce item does not list year: none is made for it
        assert not [k for k in recs if k[1] == CODE_KGCE and k[2] == 3]
        (stored,) = svc.state.records(SITE, stat_type=3, code=CODE_SITE)
        assert not stored.complete and stored.completeness < 1 / 12 + 1e-9
        assert sim.duplicates == 0
    finally:
        svc.close()
        replica.close()
