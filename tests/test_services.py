"""Under CI=true a missing service binary, or missing root, fails the test; it never skips."""

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


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "on"])
def test_ci_values_that_make_missing_services_fail(value):
    assert services.ci_from_env(value)


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_ci_values_that_allow_a_local_skip(value):
    assert not services.ci_from_env(value)


def test_missing_root_fails_under_ci(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", True)
    monkeypatch.setattr(services.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="needs root: to test it"):
        services.need_root("to test it")


def test_missing_root_skips_outside_ci(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", False)
    monkeypatch.setattr(services.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception):
        services.need_root("to test it")


def test_root_is_enough(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", True)
    monkeypatch.setattr(services.os, "geteuid", lambda: 0)
    assert services.need_root("to test it") is None
