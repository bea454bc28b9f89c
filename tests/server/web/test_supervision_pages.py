"""The console's supervision pages and report downloads, over HTTP against the running server of conftest.py."""

from __future__ import annotations

import io
import json
from datetime import date

import pytest

from tests.server.web.conftest import Client


def _code(base: str) -> str:
    from greenmine.server.supervision.config import _CREDIT_ALPHABET as A, _CREDIT_WEIGHTS as W

    t = sum(A.index(c) * w for c, w in zip(base, W))
    return base + A[(31 - t % 31) % 31]


MINES = [  # id, name, prefecture, scale; jc-unmon has no monitoring (it is no configured site)
    ("gs-red", "金昌某铜矿", "金昌市", "大型"),
    ("jc-unmon", "金昌某石料矿", "金昌市", "小型"),
    ("gs-green", "白银某铅锌矿", "白银市", "中型"),
    ("gs-other", "张掖某钨矿", "张掖市", "小型"),
]


@pytest.fixture(scope="module")
def registry(console):
    from greenmine.server.supervision.config import MineConfig
    from greenmine.server.supervision.registry import Registry

    reg = Registry(console.cfg.resolve(console.cfg.supervision.db_path))
    try:
        reg.import_rows([MineConfig(id=i, name=n, credit_code=_code(f"916203{k:011d}"), licence_no=f"C62{k:05d}",
                                    prefecture=p, county="某区", mineral="铜", scale=s, level="provincial",
                                    listed_since="2024-01-01") for k, (i, n, p, s) in enumerate(MINES, 1)],
                        "test", date(2026, 1, 5))
        cid = reg.add_check("gs-red", date(2026, 6, 1), ["i1", "i2"])
        rid = reg.record_check(cid, day=date(2026, 6, 1), result="fail", findings="扬尘防治不到位", deadline=date(2026, 9, 1),
                               officer="wang@example.test", by="test")
    finally:
        reg.close()
    return {"check": cid, "rect": rid}


def test_operator_lists_mines_opens_one_and_downloads_reports(console, registry):
    from openpyxl import load_workbook

    c = Client(console.base)
    assert c.login("op") == 303
    code, _, body = c.request("GET", "/supervision")
    assert code == 200
    for mine_id, name, pref, scale in MINES:
        assert f'data-mine="{mine_id}"' in body and name in body and pref in body
    assert 'data-status="under_rectification"' in body  # gs-red after its failed check
    assert 'href="/supervision"' in body  # the navigation
    assert 'id="annual-form"' in body and "<option>金昌市</option>" in body

    code, _, body = c.request("GET", "/supervision/mines/gs-red")
    assert code == 200
    assert "扬尘防治不到位" in body and f'data-check="{registry["check"]}"' in body
    assert f'data-rect="{registry["rect"]}"' in body and "2026-09-01" in body
    assert "under_rectification" in body and "check" in body  # the history row of the status change
    assert c.request("GET", "/supervision/mines/nope")[0] == 404

    req = c.opener.open(c.base + "/supervision/reports/monthly?site=gs-red&month=2026-11&format=xlsx", timeout=60)
    assert req.status == 200
    assert req.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert "monthly-gs-red-2026-11.xlsx" in req.headers["content-disposition"]
    wb = load_workbook(io.BytesIO(req.read()))
    assert len(wb.sheetnames) > 2
    cells = [v for ws in wb for row in ws.iter_rows(values_only=True) for v in row if v is not None]
    assert any("gs-red" in str(v) or "金昌某铜矿" in str(v) for v in cells)
    # the 20 November readings are in the report as numbers (one of the days judged)
    assert any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cells)

    req = c.opener.open(c.base + "/supervision/reports/monthly?site=gs-red&month=2026-11&format=pdf", timeout=120)
    assert req.status == 200 and req.headers["content-type"] == "application/pdf" and req.read(5) == b"%PDF-"

    code, headers, body = c.request("GET", "/supervision/reports/annual?prefecture=金昌市&year=2026&until=2026-11-21&format=json"
                                    .replace("金昌市", "%E9%87%91%E6%98%8C%E5%B8%82"))
    assert code == 200 and headers["content-type"].startswith("application/json")
    assert "filename*=UTF-8''annual-%E9%87%91%E6%98%8C%E5%B8%82-2026.json" in headers["content-disposition"]
    doc = json.loads(body)
    assert doc["prefecture"] == "金昌市" and doc["until"] == "2026-11-21"
    text = json.dumps(doc, ensure_ascii=False)
    assert "jc-unmon" in text and "gs-red" in text and "gs-green" not in text

    code, _, body = c.request("GET", "/supervision/list?format=json")
    assert code == 200 and "credit_code" not in body and "金昌某铜矿" in body


def test_officer_sees_assigned_mines_and_only_their_reports(console, registry):
    c = Client(console.base)
    assert c.login("wang") == 303
    code, _, body = c.request("GET", "/supervision")
    assert code == 200 and 'data-mine="gs-red"' in body and 'data-mine="gs-green"' in body
    assert 'data-mine="gs-other"' not in body and 'data-mine="jc-unmon"' not in body  # unassigned, unmonitored
    assert "<option>白银市</option>" in body and "<option>金昌市</option>" not in body  # 金昌市 has jc-unmon
    assert c.request("GET", "/supervision/mines/gs-red")[0] == 200
    assert c.request("GET", "/supervision/mines/gs-other")[0] == 403
    assert c.request("GET", "/supervision/mines/jc-unmon")[0] == 403
    code, _, body = c.request("GET", "/supervision/reports/monthly?site=gs-other&month=2026-11&format=xlsx")
    assert code == 403 and "not assigned" in body
    code, _, body = c.request("GET", "/supervision/reports/annual?prefecture=%E9%87%91%E6%98%8C%E5%B8%82&year=2026&format=json")
    assert code == 403 and "jc-unmon" in body
    # an API token carries the same rights
    _, token = console.users.create_token("wang", "reports")
    api = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    assert c.request("GET", "/supervision/reports/monthly?site=gs-other&month=2026-11&format=json", headers=api)[0] == 403
    code, _, body = c.request("GET", "/supervision/reports/monthly?site=gs-green&month=2026-11&format=json", headers=api)
    assert code == 200 and json.loads(body)["site"] == "gs-green"
    code, _, body = c.request("GET", "/supervision/reports/annual?prefecture=%E7%99%BD%E9%93%B6%E5%B8%82&year=2026&format=json",
                              headers=api)
    assert code == 200 and json.loads(body)["prefecture"] == "白银市"


def test_downloads_need_a_login_and_valid_arguments(console, registry):
    c = Client(console.base)
    assert c.request("GET", "/supervision")[0] == 303
    assert c.request("GET", "/supervision/reports/monthly?site=gs-red&month=2026-11&format=xlsx",
                     headers={"Accept": "application/json"})[0] == 401
    assert c.login("op") == 303
    assert c.request("GET", "/supervision/reports/monthly?site=gs-red&month=2026-13&format=xlsx")[0] == 400
    assert c.request("GET", "/supervision/reports/monthly?site=gs-red&month=2026-11&format=doc")[0] == 400
    assert c.request("GET", "/supervision/reports/monthly?site=ghost&month=2026-11&format=json")[0] == 404
    assert c.request("GET", "/supervision/reports/monthly?site=gs-red&month=0000-11&format=json")[0] == 400
    assert c.request("GET", "/supervision/reports/annual?prefecture=x&year=abc&format=json")[0] == 400
    assert c.request("GET", "/supervision/reports/annual?prefecture=x&year=99999&format=json")[0] == 400
    assert c.request("GET", "/supervision/reports/annual?prefecture=%E9%87%91%E6%98%8C%E5%B8%82&year=2026&until=2025-01-01"
                            "&format=json")[0] == 400  # until before the year
    assert c.request("GET", "/supervision/reports/annual?prefecture=nowhere&year=2026&format=json")[0] == 404
