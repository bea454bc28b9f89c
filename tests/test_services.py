"""Under CI=true a missing service binary fails the test; it never skips."""

import pytest

from tests.support import services


def test_missing_binary_fails_under_ci(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y no-such-package"):
        services.need_binary("greenmine-no-such-binary", "no-such-package")


def test_missing_binary_skips_outside_ci(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        services.need_binary("greenmine-no-such-binary", "no-such-package")


def test_present_binary_is_found():
    assert services.need_binary("sh", "dash").endswith("/sh")
