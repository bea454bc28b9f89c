"""The registry through the CLI: import (all or nothing), draws (reproducible, never a removed mine, never an
inspector twice), checks and rectifications (an overdue one raises its notice once), removal with its history,
the public list, and an annual report for a partial year."""

from __future__ import annotations

import email
import json
from pathlib import Path

import pytest

from greenmine.cli import main
from greenmine.configfile import dump_toml
from greenmine.server.supervision.config import credit_code_ok

CODES = ["91620300224400123J", "91620302710200456M", "91620321MA7L00789Y", "91620100MA7C00321W"]


def _code(base: str) -> str:
    from greenmine.server.supervision.config import _CREDIT_ALPHABET as A, _CREDIT_WEIGHTS as W

    t = sum(A.index(c) * w for c, w in zip(base, W))
    return base + A[(31 - t % 31) % 31]


def mine(i: int, **kw) -> dict:
    return {"id": f"m{i:02d}", "name": f"矿山{i}", "credit_code": _code(f"916203{i:011d}"), "licence_no": f"C62{i:05d}",
            "prefecture": "金昌市", "county": "金川区", "mineral": "铜", "scale": ("大型", "中型", "小型")[i % 3],
            "level": "provincial", "listed_since": "2024-01-01", **kw}


@pytest.fixture
def cfg(tmp_path) -> Path:
    doc = {
        "kind": "server",
        "sites": [{"id": "m01", "timezone": "Asia/Shanghai"}],
        "alerts": {"db_path": str(tmp_path / "alerts.sqlite")},
        "notify": {"eml_dir": str(tmp_path / "mail")},
        "supervision": {
            "db_path": str(tmp_path / "supervision.sqlite"), "report_dir": str(tmp_path / "reports"),
            "officers": ["chief@example.test"],
            "mines": [mine(i) for i in range(1, 9)] + [mine(9, officer="wang@example.test")],
            "inspectors": [{"id": f"i{k}", "name": f"检查员{k}", "prefecture": "金昌市" if k < 5 else ""} for k in range(1, 7)]
            + [{"id": "i-other", "name": "外地", "prefecture": "武威市"}],
        },
    }
    path = tmp_path / "server.toml"
    path.write_text(dump_toml(doc))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_credit_code_check_digit():
    assert all(credit_code_ok(c) for c in CODES)
    assert not credit_code_ok("91620300224400123K")  # wrong check character
    assert not credit_code_ok("9162030022440012")  # too short


def test_draw_is_reproducible_and_never_draws_a_removed_mine_or_an_inspector_twice(cfg, capsys):
    from greenmine.server.supervision import draw
    from greenmine.server.supervision.registry import Registry

    c = ["--config", cfg]
    rc, out, _ = run(capsys, "supervision", "draw", *c, "--prefecture", "金昌市", "--mines", 3, "--inspectors", 4,
                     "--seed", "s1", "--date", "2026-03-01")
    assert rc == 0, out
    first = out
    # the same seed and pools: the same draw, and `draws --verify` re-runs it from the record
    rc, again, _ = run(capsys, "supervision", "draw", *c, "--prefecture", "金昌市", "--mines", 3, "--inspectors", 4,
                       "--seed", "s1", "--date", "2026-03-01", "--dry-run")
    line = lambda text, key: next(x for x in text.splitlines() if key in x)  # noqa: E731
    assert line(first, "mines drawn") == line(again, "mines drawn")
    assert line(first, "inspectors drawn") == line(again, "inspectors drawn")
    rc, out, _ = run(capsys, "supervision", "draws", *c, "--verify", 1)
    assert rc == 0 and "the same as recorded" in out

    reg = Registry(Path(cfg).parent / "supervision.sqlite")
    try:
        d = reg.draw(1)
        # the pool holds the prefecture's listed mines and its own and province-wide inspectors, not Wuwei's
        assert d["mine_pool"] == [f"m{i:02d}" for i in range(1, 10)] and "i-other" not in d["inspector_pool"]
        # anyone can re-run it with the published method: sha256 ranks
        assert d["mines"] == sorted(d["mine_pool"], key=lambda m: draw.rank("s1", "mine", m))[:3]
        # a failed check, a lapsed rectification and a removal take a mine out of every later pool
        victim = d["mines"][0]
        check = next(ch for ch in reg.checks() if ch.mine_id == victim)
    finally:
        reg.close()
    assert run(capsys, "supervision", "check", *c, check.id, "--result", "fail", "--findings", "粉尘防治不到位",
               "--date", "2026-03-10", "--deadline", "2026-04-10")[0] == 0
    rc, _, err = run(capsys, "supervision", "remove", *c, victim, "--reason", "逾期未整改", "--date", "2026-04-05")
    assert rc == 2 and "no failed, lapsed or overdue rectification" in err  # not yet due: it cannot be removed
    assert run(capsys, "supervision", "remove", *c, victim, "--reason", "逾期未整改", "--date", "2026-04-20")[0] == 0
    rc, out, _ = run(capsys, "supervision", "history", *c, victim)
    assert "listed -> under_rectification" in out and "under_rectification -> removed" in out and "逾期未整改" in out

    seen_removed = set()
    for seed in range(60):
        rc, out, _ = run(capsys, "supervision", "draw", *c, "--prefecture", "金昌市", "--mines", 8, "--inspectors", 6,
                         "--seed", f"x{seed}", "--date", "2026-05-01", "--dry-run")
        assert rc == 0
        mines = line(out, "mines drawn").split(": ")[1].split(", ")
        team = line(out, "inspectors drawn").split(": ")[1].split(", ")
        seen_removed |= {victim} & set(mines)
        assert len(team) == len(set(team)) == 6 and len(mines) == len(set(mines)) == 8
    assert not seen_removed
    # more than the pool holds: an error, never a repeat
    rc, _, err = run(capsys, "supervision", "draw", *c, "--prefecture", "金昌市", "--mines", 2, "--inspectors", 7,
                     "--date", "2026-05-01", "--dry-run")
    assert rc == 2 and "cannot draw 7 inspector(s) from a pool of 6" in err


def test_overdue_rectification_raises_its_notice_once(cfg, capsys, tmp_path):
    c = ["--config", cfg]
    rc, out, _ = run(capsys, "supervision", "check", *c, 0, "--mine", "m09", "--result", "fail", "--findings", "尾矿库渗漏",
                     "--date", "2026-06-01", "--deadline", "2026-07-01")
    assert rc == 0 and "rectification 1 opened, due 2026-07-01" in out
    rc, out, _ = run(capsys, "supervision", "check-overdue", *c, "--date", "2026-07-01")
    assert out.startswith("0 overdue")  # due today is not overdue
    for day in ("2026-07-02", "2026-07-03", "2026-07-09"):
        run(capsys, "supervision", "check-overdue", *c, "--date", day)
    mails = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(mails) == 1
    msg = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
    assert msg["To"] == "wang@example.test"  # the mine's own officer, before supervision.officers
    body = msg.get_content()
    assert "整改逾期" in str(msg["Subject"]) and "2026-07-01" in body and "m09" in body
    rc, out, _ = run(capsys, "supervision", "rectifications", *c)
    assert "officer told" in out
    # closing it as passed puts the mine back on the list
    assert run(capsys, "supervision", "rectification", "close", *c, 1, "--result", "passed", "--date", "2026-07-10")[0] == 0
    rc, out, _ = run(capsys, "supervision", "history", *c, "m09")
    assert out.strip().splitlines()[-1].startswith("2026-07-10  under_rectification -> listed")


def test_import_with_bad_rows_names_each_and_imports_none(cfg, capsys, tmp_path):
    good = mine(20)
    header = list(good)
    rows = [
        good,
        mine(21, credit_code="91620300224400123K"),  # bad check digit
        mine(22, scale="特大型"),  # not a scale
        mine(23, level="provincial", listed_since=""),  # a listed mine without its date
        {**mine(24), "licence_no": good["licence_no"]},  # a licence twice
    ]
    csv_path = tmp_path / "mines.csv"
    csv_path.write_text("\n".join([",".join(header)] + [",".join(str(r.get(h, "")) for h in header) for r in rows]) + "\n",
                        encoding="utf-8")
    rc, _, err = run(capsys, "supervision", "import", "--config", cfg, csv_path)
    assert rc == 2 and "nothing imported, 4 problem(s)" in err
    assert 'line 3 "m21": credit_code' in err
    assert 'line 4 "m22": scale' in err
    assert 'line 5 "m23"' in err and "listed_since" in err
    assert 'line 6 "m24": licence_no' in err and "line 2" in err
    rc, out, _ = run(capsys, "supervision", "mines", "--config", cfg, "--json")
    assert "m20" not in {m["id"] for m in json.loads(out)}  # the good row was not imported either

    # the same rows without the bad ones, as XLSX with Chinese headers and values: all imported
    from openpyxl import Workbook

    from greenmine.server.supervision.imports import COLUMN_ALIASES

    zh = {v: k for k, v in COLUMN_ALIASES.items()}
    wb = Workbook()
    ws = wb.active
    ws.append([zh[h] for h in header])
    for i in (20, 21):
        r = mine(i, level="national")
        ws.append([("国家级" if h == "level" else r[h]) for h in header])
    wb.save(tmp_path / "mines.xlsx")
    rc, out, err = run(capsys, "supervision", "import", "--config", cfg, tmp_path / "mines.xlsx", "--date", "2026-02-01")
    assert rc == 0, err
    mines = {m["id"]: m for m in json.loads(run(capsys, "supervision", "mines", "--config", cfg, "--json")[1])}
    assert mines["m21"]["level"] == "national" and mines["m20"]["source"].startswith("import")


def test_public_list_has_published_fields_only(cfg, capsys):
    rc, out, _ = run(capsys, "supervision", "export-list", "--config", cfg, "--format", "json", "--date", "2026-05-01")
    rows = json.loads(out)
    assert len(rows) == 9 and rows[0]["level"] == "省级" and rows[0]["status"] == "在库"
    assert set(rows[0]) == {"name", "prefecture", "county", "mineral", "scale", "level", "listed_since", "status", "licence_no"}
    assert "officer" not in out and "credit_code" not in out and "wang@example.test" not in out
    rc, out, _ = run(capsys, "supervision", "export-list", "--config", cfg, "--date", "2026-05-01")
    assert out.splitlines()[0] == "name,prefecture,county,mineral,scale,level,listed_since,status,licence_no"


def test_annual_report_for_a_partial_year_says_up_to_which_date(cfg, capsys, tmp_path):
    rc, out, err = run(capsys, "report", "annual", "--config", cfg, "--prefecture", "金昌市", "--year", "2026",
                       "--until", "2026-12-05", "--format", "json")
    assert rc == 0, err
    rep = json.loads((tmp_path / "reports" / "annual-金昌市-2026.json").read_text())
    assert rep["partial"] is True and rep["holds_up_to"] == "2026-12-05"
    assert rep["notes"][0].startswith("数据截至 2026-12-05")
    summary = next(p for p in rep["parts"] if p["id"] == "summary")["rows"]
    assert summary[0] == ["数据截至 data up to", "2026-12-05", "部分年度 partial year"]
    # no KPI store yet: every monitored mine is stated as without data, the others as not monitored
    nm = {r[0]: r[2] for r in next(p for p in rep["parts"] if p["id"] == "not_measured")["rows"]}
    assert nm["m01"].startswith("已接入但无数据") and nm["m02"].startswith("未接入在线监测")
    # the whole year: no partial flag
    run(capsys, "report", "annual", "--config", cfg, "--prefecture", "金昌市", "--year", "2025", "--format", "json")
    rep = json.loads((tmp_path / "reports" / "annual-金昌市-2025.json").read_text())
    assert rep["partial"] is False and rep["holds_up_to"] == "2025-12-31"


def test_an_import_without_a_status_column_keeps_the_status_a_check_gave(cfg, capsys, tmp_path):
    c = ["--config", cfg]
    full = mine(30)
    (tmp_path / "new.csv").write_text(",".join(full) + "\n" + ",".join(str(v) for v in full.values()) + "\n", encoding="utf-8")
    assert run(capsys, "supervision", "import", *c, tmp_path / "new.csv", "--date", "2026-05-01")[0] == 0
    assert run(capsys, "supervision", "check", *c, 0, "--mine", "m30", "--result", "fail", "--date", "2026-06-01")[0] == 0
    m = mine(30, county="永昌县")
    header = [h for h in m if h not in ("status", "level")]
    (tmp_path / "update.csv").write_text(",".join(header) + "\n" + ",".join(str(m[h]) for h in header) + "\n",
                                         encoding="utf-8")
    assert run(capsys, "supervision", "import", *c, tmp_path / "update.csv", "--date", "2026-06-05")[0] == 0
    mines = {x["id"]: x for x in json.loads(run(capsys, "supervision", "mines", *c, "--json")[1])}
    assert mines["m30"]["county"] == "永昌县"
    assert (mines["m30"]["status"], mines["m30"]["level"]) == ("under_rectification", "provincial")
