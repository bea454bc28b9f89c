"""SM4 against the standard's test vector; config errors that name their place; the upload body per profile."""

from __future__ import annotations

import pytest

from greenmine.configfile import ConfigError
from greenmine.server.uplink.energy.client import CentreClient
from greenmine.server.uplink.energy.config import PlatformProfile, load_profile
from greenmine.server.uplink.energy.queue import Record
from greenmine.server.uplink.energy.sm4 import (
    Sm4Error, sm4_block_encrypt, sm4_cbc_decrypt_hex, sm4_cbc_encrypt_hex, sm4_ecb_decrypt_hex, sm4_ecb_encrypt_hex,
)
from greenmine.simulators.energy_platform import sm4_decrypt
from tests.server.uplink.energy.conftest import ENTERPRISE, SITE, energy_doc, items, local, server_cfg

VECTOR = "0123456789abcdeffedcba9876543210"


def test_sm4_gbt_32907_appendix_a_vector():
    key = bytes.fromhex(VECTOR)
    assert sm4_block_encrypt(key, key).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_ecb_and_cbc_round_trip_and_match_the_simulator():
    c = sm4_ecb_encrypt_hex(VECTOR, "1234.567")
    assert len(c) == 32 and sm4_ecb_decrypt_hex(VECTOR, c) == "1234.567"
    assert sm4_decrypt(VECTOR, c) == "1234.567"  # the simulator's own decryption agrees
    iv = "00112233445566778899aabbccddeeff"
    c = sm4_cbc_encrypt_hex(VECTOR, iv, "pass-word")
    assert sm4_cbc_decrypt_hex(VECTOR, iv, c) == "pass-word" and sm4_decrypt(VECTOR, c, iv) == "pass-word"
    with pytest.raises(Sm4Error):
        sm4_ecb_encrypt_hex("abcd", "x")  # a key of the wrong size
    with pytest.raises(Sm4Error):
        sm4_ecb_decrypt_hex("00112233445566778899aabbccddeeff", sm4_ecb_encrypt_hex(VECTOR, "1.0"))  # the wrong key


def centre_doc(**kw) -> dict:
    return {"name": "dc1", "url": "https://127.0.0.1:1", "profile": "variant-a", **kw}


def error_of(tmp_path, energy: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        server_cfg(tmp_path, energy)
    return str(exc.value)


def test_bad_item_code_names_its_place(tmp_path):
    bad = items()
    bad[1]["code"] = "00-00-000-010100-30"
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc()], item_docs=bad))
    assert 'energy: enterprises[0] "金昌某铜矿": items[1]: code' in msg and "00-00-000-010100-30" in msg and "pp-uu-eeEE-ccTTTT-dd" in msg


def test_unknown_profile_and_unknown_variant_name_their_place(tmp_path):
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc(profile="variant-x")]))
    assert 'centres[0] "dc1"' in msg and 'profile "variant-x": no such platform profile' in msg
    prof = tmp_path / "p.toml"
    prof.write_text('kind = "energy-platform"\nname = "p"\nvariant = "c"\n[valid]\nvalid = true\ninvalid = false\n')
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc(profile=str(prof))]))
    assert 'centres[0] "dc1"' in msg and "variant" in msg and "'a' or 'b'" in msg


def test_missing_key_names_its_place(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text('kind = "energy-platform"\nname = "p"\nvariant = "a"\n')
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc(profile=str(prof))]))
    assert 'centres[0] "dc1"' in msg and "valid: Field required" in msg
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc(profile="variant-b")]))
    assert 'centres[0] "dc1"' in msg and "needs password" in msg
    no_device = items()
    del no_device[0]["device"]
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc()], item_docs=no_device))
    assert 'enterprises[0] "金昌某铜矿": items[0]' in msg and "meter_kwh needs device" in msg
    msg = error_of(tmp_path, energy_doc(tmp_path, [centre_doc(secret_key="12ab")]))
    assert 'centres[0] "dc1": secret_key' in msg


def test_enterprise_of_an_unknown_site_and_a_duplicate_code(tmp_path):
    doc = energy_doc(tmp_path, [centre_doc()])
    doc["enterprises"][0]["site"] = "nowhere"
    assert 'energy.enterprises[0] "nowhere": not a configured site' in error_of(tmp_path, doc)
    dup = items() + [items()[0]]
    assert "duplicate item code" in error_of(tmp_path, energy_doc(tmp_path, [centre_doc()], item_docs=dup))


def test_shipped_profiles_load_and_the_body_follows_the_profile(tmp_path):
    from pathlib import Path

    a = load_profile("variant-a", Path("."))
    sm4 = load_profile("variant-a-sm4", Path("."))
    assert load_profile("variant-b", Path(".")).variant == "b"
    cfg = server_cfg(tmp_path, energy_doc(tmp_path, [centre_doc()]))
    ent = cfg.energy.enterprises[0]
    rec = Record(SITE, "01-01-0101-010100-30", 0, local("2026-11-30 08:15:00"), local("2026-11-30 08:30:00"), 30.5,
                 False, 0.8, 4, 4)
    creds = {"device_id": "D1", "secret_key": VECTOR}
    body = CentreClient(cfg.energy.centres[0], a).body(ent, creds, [rec], local("2026-11-30 09:00:00"))
    assert body == {"deviceId": "D1", "enterpriseCode": ENTERPRISE, "data": [{
        "dataCode": "01-01-0101-010100-30", "dataValue": "30.50", "inputType": 4, "statType": 0,
        "statDate": "2026-11-30 08:15:00", "uploadDate": "2026-11-30 09:00:00", "scope": 4, "valid": False}]}
    enc = CentreClient(cfg.energy.centres[0], sm4).body(ent, creds, [rec], local("2026-11-30 09:00:00"))
    assert sm4_decrypt(VECTOR, enc["data"][0]["dataValue"]) == "30.50" and enc["data"][0]["valid"] == "1"
    # every field name is the profile's: a province that writes DeviceID and DataValue
    cased = PlatformProfile.model_validate({**a.model_dump(), "fields": {**a.fields.model_dump(), "device_id": "DeviceID",
                                                                       "data_value": "DataValue"}})
    body = CentreClient(cfg.energy.centres[0], cased).body(ent, creds, [rec], 0.0)
    assert body["DeviceID"] == "D1" and body["data"][0]["DataValue"] == "30.50"


def test_readme_and_doc_energy_snippets_are_valid_server_config(tmp_path):
    import re
    import tomllib
    from pathlib import Path

    from greenmine.server.config import load_server_config

    root = Path(__file__).resolve().parents[4]
    for doc, first in (("README.md", "[[energy.centres]]"), ("docs/energy-platform.md", "[energy]")):
        text = (root / doc).read_text(encoding="utf-8")
        m = re.search(r"```toml\n(" + re.escape(first) + r".*?)```", text, re.S)
        assert m, f"{doc} lost its energy configuration example"
        energy = tomllib.loads(m.group(1))["energy"]
        sites = [{"id": e["site"]} for e in energy["enterprises"]]
        load_server_config(tmp_path / "server.toml", doc={"kind": "server", "sites": sites, "energy": energy})


@pytest.mark.parametrize("item, needle", [
    ({"source": "site_kwh", "stat_types": ["day", "year"]}, "year is the sum of the item's month records"),
    ({"source": "kpi", "kpi": "energy_intensity", "stat_types": ["month", "year"]}, "source kpi"),
])
def test_year_needs_month_and_is_not_for_kpis(tmp_path, item, needle):
    from greenmine.configfile import ConfigError
    from tests.server.uplink.energy.conftest import energy_doc, server_cfg

    with pytest.raises(ConfigError) as info:
        server_cfg(tmp_path, energy_doc(tmp_path, [], item_docs=[{"code": "00-00-0000-010100-30", **item}]))
    assert needle in str(info.value)
