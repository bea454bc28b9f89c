import pytest

from tests.server.notify.smtpsink import SmtpSink


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()
