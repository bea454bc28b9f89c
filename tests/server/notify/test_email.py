"""Email through a real SMTP server (aiosmtpd on a free loopback port)."""

import warnings

import pytest
from pydantic import SecretStr

from greenmine.server.monitor.alerts.config import AlertsConfig
from greenmine.server.monitor.alerts.engine import AlertEngine, open_db
from greenmine.server.config import SiteConfig, SmtpConfig
from greenmine.server.monitor.kpi.model import KpiValue
from greenmine.server.notify.config import NotifyConfig
from greenmine.server.notify.eml import EmlDirTransport
from greenmine.server.notify.errors import TemplateError
from greenmine.server.notify.outbox import Notifier
from greenmine.server.notify.smtp import SmtpTransport
from greenmine.server.notify.templates import Templates
from tests.server.notify.smtpsink import SmtpSink, self_signed
from tests.support.services import wait_for

T0 = 1_795_708_800.0  # 2026-11-27 00:00 Asia/Shanghai
DAY = 86400.0
SITE = SiteConfig(id="jc-cu", name="金昌某铜矿", recipients=["officer@example.test", "chief@example.test"])


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def night_noise(day_index, value, device="n1"):
    start = T0 + day_index * DAY + 22 * 3600
    return KpiValue(
        site="jc-cu", kpi="noise_leq_night", subject=device, period_kind="noise_night", period_start=start,
        period_end=start + 8 * 3600, period_label=f"2026-11-{27 + day_index} night", value=value, unit="dB(A)",
        completeness=0.975, complete=True, devices=(device,), limit=50, comparison=">",
        standard="GB 12348-2008 2类 夜间 50 dB(A)", extra={"arithmetic_mean_db": 44.0, "samples": 468},
    )


def reuse(day_index, value):
    start = T0 + day_index * DAY
    return KpiValue(
        site="jc-cu", kpi="water_reuse_daily", subject="site", period_kind="day", period_start=start,
        period_end=start + DAY, period_label="2026-11-27", value=value, unit="%", completeness=1.0, complete=True,
        devices=("reuse1", "fresh1"), limit=85.0, comparison="<",
        standard="甘肃省绿色矿山建设实施方案 选矿废水循环利用率 ≥ 85%",
        extra={"reused_m3": 1520.0, "fresh_m3": 480.0},
    )


def build(tmp_path, transport, clock, **ncfg):
    path = tmp_path / "alerts.sqlite"
    eng = AlertEngine(AlertsConfig(reminder_interval_s=0), [SITE], open_db(path), clock=clock)
    notifier = Notifier(NotifyConfig(**ncfg), open_db(path), transport, clock=clock)
    return eng, notifier


def smtp(sink, **kw):
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=sink.port, security="none", sender="greenmine@mine.test", timeout_s=5, **kw))


def close(*objs):
    for o in objs:
        o.db.close()


def test_firing_email_content_bilingual_with_value_limit_and_standard(tmp_path, smtp_sink):
    clock = Clock(T0 + DAY + 7 * 3600)
    eng, notifier = build(tmp_path, smtp(smtp_sink), clock)
    eng.observe_kpis([night_noise(0, 53.2)])
    assert notifier.run_once() == 2
    msgs = wait_for(lambda: len(smtp_sink.received()) == 2 and smtp_sink.received(), 5, what="2 emails")
    assert sorted(m["To"] for m in msgs) == ["chief@example.test", "officer@example.test"]
    m = msgs[0]
    subject, body = str(m["Subject"]), m.get_content()
    assert "警告" in subject and "金昌某铜矿" in subject and "厂界噪声夜间等效声级" in subject
    assert "warning" in subject and "night-time Leq" in subject
    assert "53.2 dB(A)" in body and "≤ 50 dB(A)" in body
    assert "GB 12348-2008 2类 夜间 50 dB(A)" in body
    assert "数据完整率" in body and "97.5 %" in body and "n1" in body
    assert "2026-11-27 22:00" in body  # period start, local time
    assert "解除条件" in body and "Resolves when" in body
    assert body.index("测量值") < body.index("Measured")  # Chinese first, English second
    close(eng, notifier)


def test_reuse_email_and_short_resolution_follow_up(tmp_path, smtp_sink):
    clock = Clock(T0 + DAY + 60)
    eng, notifier = build(tmp_path, smtp(smtp_sink), clock)
    eng.observe_kpis([reuse(0, 76.0)])
    notifier.run_once()
    clock.t += DAY
    eng.observe_kpis([reuse(1, 91.0)])
    notifier.run_once()
    msgs = [m for m in wait_for(lambda: len(smtp_sink.received()) == 4 and smtp_sink.received(), 5)
            if m["To"] == "officer@example.test"]
    firing, resolved = msgs
    assert "选矿废水循环利用率" in str(firing["Subject"]) and "严重" in str(firing["Subject"])
    assert "76.00 %" in firing.get_content() and "≥ 85 %" in firing.get_content()  # judged at 2 decimals (85.0)
    assert "回用水量 1520 m³" in firing.get_content()
    assert "已解除" in str(resolved["Subject"]) and "resolved" in str(resolved["Subject"])
    rb = resolved.get_content()
    assert "91.00 %" in rb and "最差值 76.00 %" in rb and len(rb) < len(firing.get_content())
    close(eng, notifier)


def test_outage_mail_waits_and_arrives_once(tmp_path):
    sink = SmtpSink()
    sink.start()
    clock = Clock(T0 + 3 * DAY)
    eng, notifier = build(tmp_path, smtp(sink), clock, retry_initial_s=30)
    sink.stop()  # relay down before anything is sent
    eng.observe_kpis([reuse(0, 70.0), night_noise(0, 55.0)])
    assert notifier.run_once() == 0
    assert len(notifier.rows("queued")) == 4 and notifier.rows("queued")[0].attempts == 1
    clock.t += 10
    assert notifier.deliver() == 0  # still inside the backoff
    close(eng, notifier)

    # restart of the whole server process while the relay is down
    eng, notifier = build(tmp_path, smtp(sink), clock, retry_initial_s=30)
    eng.tick()
    assert notifier.run_once() == 0
    sink.start()  # relay back on the same port
    clock.t += 60
    assert notifier.run_once() == 4
    clock.t += 3600
    assert notifier.run_once() == 0
    close(eng, notifier)
    eng, notifier = build(tmp_path, smtp(sink), clock)
    eng.tick()
    assert notifier.run_once() == 0
    msgs = wait_for(lambda: len(sink.received()) >= 4 and sink.received(), 5)
    assert len(msgs) == 4 and len({(m["Message-ID"]) for m in msgs}) == 4
    assert len(notifier.rows("sent")) == 4
    close(eng, notifier)
    sink.stop()


def test_many_alerts_at_once_become_one_digest_per_recipient(tmp_path, smtp_sink):
    clock = Clock(T0 + 2 * DAY)
    eng, notifier = build(tmp_path, smtp(smtp_sink), clock, digest_threshold=5)
    eng.observe_kpis([night_noise(0, 55.0 + i, device=f"n{i}") for i in range(6)])
    assert notifier.run_once() == 2
    msgs = wait_for(lambda: len(smtp_sink.received()) == 2 and smtp_sink.received(), 5)
    body = msgs[0].get_content()
    assert "告警汇总" in str(msgs[0]["Subject"]) and "6" in str(msgs[0]["Subject"])
    for i in range(6):
        assert f"{55 + i}.0 dB(A)" in body and f"n{i}" in body
    # below the threshold: one email each
    eng.observe_kpis([reuse(1, 70.0)])
    assert notifier.run_once() == 2
    close(eng, notifier)


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_tls_modes_with_auth(tmp_path, mode):
    files = self_signed(tmp_path)
    sink = SmtpSink(mode=mode, tls_files=files, credentials=("greenmine", "s3cret"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink.start()
    try:
        cfg = SmtpConfig(host="127.0.0.1", port=sink.port, security=mode, username="greenmine", password="s3cret",
                         sender="greenmine@mine.test", timeout_s=5)
        clock = Clock(T0 + 2 * DAY)
        eng, notifier = build(tmp_path, SmtpTransport(cfg, ssl_context=sink.client_ctx()), clock)
        eng.observe_kpis([reuse(0, 70.0)])
        assert notifier.run_once() == 2
        assert len(wait_for(lambda: len(sink.received()) == 2 and sink.received(), 5)) == 2
        close(eng, notifier)
        # wrong password: the mail waits instead of being lost
        # (aiosmtpd stalls smtplib's fallback mechanism after a refused AUTH: a short timeout keeps this fast)
        bad = cfg.model_copy(update={"password": SecretStr("nope"), "timeout_s": 1.0})
        eng, notifier = build(tmp_path, SmtpTransport(bad, ssl_context=sink.client_ctx()), clock)
        eng.observe_kpis([reuse(1, 91.0)])
        assert notifier.run_once() == 0 and len(notifier.rows("queued")) == 2
        assert notifier.rows("queued")[0].last_error
        close(eng, notifier)
    finally:
        sink.stop()


def test_demo_mode_writes_eml_files(tmp_path):
    clock = Clock(T0 + 2 * DAY)
    eng, notifier = build(tmp_path, EmlDirTransport(tmp_path / "mail"), clock)
    eng.observe_kpis([reuse(0, 70.0)])
    assert notifier.run_once() == 2
    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 2
    import email
    import email.policy

    m = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert "选矿废水循环利用率" in str(m["Subject"]) and "70.00 %" in m.get_content()
    close(eng, notifier)


def test_template_override_from_templates_dir(tmp_path):
    d = tmp_path / "tpl"
    d.mkdir()
    (d / "firing.txt.j2").write_text(
        '{% import "_notice.j2" as n with context %}\n'
        "Subject: 超标 {{ site_name }}\n\n值 {{ n.value_text() }}{{ ' 离线' if rule_kind == 'deadman' else '' }}\n",
        encoding="utf-8")
    t = Templates(d)
    assert t.notice("firing", {"site_name": "矿", "value": 3.0, "unit": "mg/m³"}) == ("超标 矿", "值 3 mg/m³\n")
    assert t.notice("firing", {"site_name": "矿", "kind": "deadman", "value": 300})[1] == "值 300 s 无数据 / no data for 300 s 离线\n"
    # the templates not overridden are the shipped ones
    assert t.notice("resolved", {"site_name": "矿", "title_en": "x"})[0].startswith("[已解除] 矿")


def test_override_with_an_undefined_variable_fails_at_load_naming_the_template(tmp_path):
    d = tmp_path / "tpl"
    d.mkdir()
    (d / "reminder.txt.j2").write_text("Subject: {{ site_name }}\n\n{% if rule_kind == 'deadman' %}{{ nope }}{% endif %}\n",
                                       encoding="utf-8")
    # in a branch the samples might not take: found by reading the template, not by luck
    with pytest.raises(TemplateError, match=r"reminder\.txt\.j2: unknown variable\(s\) nope"):
        Templates(d)
    (d / "reminder.txt.j2").write_text("Subject: {{ site_name }}\n\n{{ extra.nope }}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"reminder\.txt\.j2: .*'nope'"):
        Templates(d)
    (d / "reminder.txt.j2").write_text("Subject: {{ site_name }\n\nx\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"reminder\.txt\.j2, line 1"):
        Templates(d)


def test_strict_rendering_never_gives_a_half_filled_email(tmp_path):
    d = tmp_path / "tpl"
    d.mkdir()
    # passes every load-time check, but this notice has no such extra field
    (d / "firing.txt.j2").write_text(
        "Subject: {{ site_name }}\n\n{{ extra.max if extra.samples is defined and extra.samples > 5 else '-' }}\n",
        encoding="utf-8")
    (d / "_partial.j2").write_text("{{ site_name }}", encoding="utf-8")  # a partial is allowed
    t = Templates(d)
    assert t.notice("firing", {"site_name": "矿"}) == ("矿", "-\n")
    with pytest.raises(TemplateError, match=r"firing\.txt\.j2: .*'max'"):
        t.notice("firing", {"site_name": "矿", "extra": {"samples": 468}})


def test_override_folder_mistakes_fail_at_load(tmp_path):
    d = tmp_path / "tpl"
    with pytest.raises(TemplateError, match="is not a folder"):
        Templates(d)
    d.mkdir()
    (d / "firng.txt.j2").write_text("Subject: x\n\nx\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="firng.txt.j2: unknown template name"):
        Templates(d)
    (d / "firng.txt.j2").unlink()
    (d / "firing.txt").write_text("Subject: ${site_name}\n\nx\n", encoding="utf-8")  # an old string.Template file
    with pytest.raises(TemplateError, match=r"firing.txt: string.Template files are no longer read; rename it firing.txt.j2"):
        Templates(d)


HOSTILE_UNIT = "kW\r\nBcc: evil@example.test\u2028\x85\x0b"


def test_a_hostile_unit_does_not_stop_the_mail_behind_it(tmp_path, smtp_sink):
    # the unit reaches the subject: on the old code building that header raised and the row blocked the outbox
    clock = Clock(T0 + 2 * DAY)
    rule = {"kind": "threshold", "name": "crusher", "source": "metric", "series": "power_kw", "comparison": ">", "limit": 800}
    path = tmp_path / "alerts.sqlite"
    eng = AlertEngine(AlertsConfig.model_validate({"reminder_interval_s": 0, "rules": [rule]}), [SITE], open_db(path), clock=clock)
    notifier = Notifier(NotifyConfig(), open_db(path), smtp(smtp_sink), clock=clock)
    eng.observe_metric("jc-cu", "crusher-meter", "power_kw", clock.t, 900.0, unit=HOSTILE_UNIT)
    notifier.dispatch()
    eng.observe_kpis([reuse(0, 70.0)])
    notifier.run_once()
    msgs = wait_for(lambda: len(smtp_sink.received()) == 4 and smtp_sink.received(), 5, what="4 emails")
    assert all(m["Bcc"] is None for m in msgs)
    assert all(to == ["chief@example.test"] or to == ["officer@example.test"] for _, to in smtp_sink.envelopes)
    hostile = [m for m in msgs if "power_kw" in str(m["Subject"])]
    assert len(hostile) == 2 and "900.00 kW\\u000d\\u000aBcc: evil@example.test\\u2028\\u0085\\u000b" in str(hostile[0]["Subject"])
    assert "\u2028" not in hostile[0].get_content() and "\x85" not in hostile[0].get_content()
    assert len([m for m in msgs if "选矿废水循环利用率" in str(m["Subject"])]) == 2
    assert [r.status for r in notifier.rows()] == ["sent"] * 4
    close(eng, notifier)


def test_an_email_that_cannot_be_built_is_dead_lettered_and_listed(tmp_path, smtp_sink, capsys):
    from greenmine.cli import main

    clock = Clock(T0 + 2 * DAY)
    eng, notifier = build(tmp_path, smtp(smtp_sink), clock)
    notifier.enqueue("officer@example.test", "月报\nBcc: evil@example.test", "body")  # a report with a broken subject
    eng.observe_kpis([reuse(0, 70.0)])
    assert notifier.run_once() == 2
    assert len(wait_for(lambda: len(smtp_sink.received()) == 2 and smtp_sink.received(), 5)) == 2
    (dead,) = notifier.rows("dead")
    assert dead.attempts == 0 and "cannot build email" in dead.last_error and "linefeed" in dead.last_error
    clock.t += 3600
    assert notifier.run_once() == 0 and len(smtp_sink.received()) == 2  # not retried
    close(eng, notifier)
    (tmp_path / "server.toml").write_text('[alerts]\ndb_path = "alerts.sqlite"\n', encoding="utf-8")
    assert main(["alerts", "outbox", "--config", str(tmp_path / "server.toml")]) == 0
    out = capsys.readouterr().out
    assert "dead" in out and "cannot build email" in out and "月报\\u000aBcc" in out
    assert "sent" not in out


def test_a_notice_that_cannot_be_rendered_is_dead_lettered_at_dispatch(tmp_path, smtp_sink):
    d = tmp_path / "tpl"
    d.mkdir()
    # loads (the samples have few samples), but a real night notice has 468 and no "max"
    (d / "firing.txt.j2").write_text(
        "Subject: {{ site_name }} {{ rule }}\n\n{{ extra.max if extra.samples is defined and extra.samples > 5 else '-' }}\n",
        encoding="utf-8")
    clock = Clock(T0 + DAY + 7 * 3600)
    path = tmp_path / "alerts.sqlite"
    eng = AlertEngine(AlertsConfig(reminder_interval_s=0), [SITE], open_db(path), clock=clock)
    notifier = Notifier(NotifyConfig(), open_db(path), smtp(smtp_sink), templates=Templates(d), clock=clock)
    eng.observe_kpis([night_noise(0, 53.2)])
    eng.observe_kpis([reuse(0, 70.0)])
    assert notifier.run_once() == 2
    msgs = wait_for(lambda: len(smtp_sink.received()) == 2 and smtp_sink.received(), 5)
    assert all("water_reuse_daily" in str(m["Subject"]) for m in msgs)
    dead = notifier.rows("dead")
    assert len(dead) == 2 and all("cannot render: template" in r.last_error and "'max'" in r.last_error for r in dead)
    close(eng, notifier)


def test_the_email_cites_the_sites_own_rule(tmp_path, smtp_sink):
    from datetime import date

    from greenmine.server.config import Limits
    from greenmine.server.monitor.kpi import periods
    from greenmine.server.monitor.kpi.config import KpiConfig
    from greenmine.server.monitor.kpi.engine import KpiEngine
    from greenmine.server.monitor.kpi.store import MemorySource

    nm = SiteConfig(id="nm-fe", name="包头某铁矿", recipients=["officer@example.test"],
                    limits=Limits(water_reuse_standard="内蒙古自治区绿色矿山建设方案 选矿废水循环利用率 ≥ {limit:g}%"))
    src = MemorySource()
    for i in range(24 * 60 + 1):
        src.add("nm-fe", "water_reused_m3_total", "reuse1", T0 + 60 * i, 5000 + 0.7 * i)
        src.add("nm-fe", "water_fresh_m3_total", "fresh1", T0 + 60 * i, 300 + 0.3 * i)
    (kpi,) = [v for v in KpiEngine(KpiConfig(), [nm], src).compute("nm-fe", periods.day(date(2026, 11, 27), "Asia/Shanghai"))
              if v.kpi == "water_reuse_daily"]
    clock = Clock(T0 + DAY + 60)
    path = tmp_path / "alerts.sqlite"
    eng = AlertEngine(AlertsConfig(reminder_interval_s=0), [nm], open_db(path), clock=clock)
    notifier = Notifier(NotifyConfig(), open_db(path), smtp(smtp_sink), clock=clock)
    eng.observe_kpis([kpi])
    assert notifier.run_once() == 1
    (m,) = wait_for(lambda: smtp_sink.received(), 5, what="1 email")
    body = m.get_content()
    assert "依据:        内蒙古自治区绿色矿山建设方案 选矿废水循环利用率 ≥ 85%" in body and "甘肃" not in body
    assert "Standard:           内蒙古自治区绿色矿山建设方案" in body
    close(eng, notifier)
