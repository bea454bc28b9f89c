"""The autouse leak check must catch what it promises to catch."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path, body: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_leaky.py"
    test.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         "-c", str(ROOT / "pyproject.toml"), "--confcutdir", str(ROOT / "tests"),
         "-p", "tests.conftest", str(test)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_leaked_thread_fails(tmp_path):
    out = run_pytest(tmp_path, """
        import threading
        stop = threading.Event()
        def test_leak():
            threading.Thread(target=stop.wait, args=(30,), name="leaky", daemon=True).start()
    """)
    assert out.returncode != 0 and "leaked threads [leaky]" in out.stdout, out.stdout


def test_leaked_child_process_fails(tmp_path):
    out = run_pytest(tmp_path, """
        import subprocess, sys
        def test_leak():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(8)"])
    """)
    assert out.returncode != 0 and "child processes [" in out.stdout, out.stdout


def test_clean_test_passes(tmp_path):
    out = run_pytest(tmp_path, """
        import threading
        def test_ok():
            t = threading.Thread(target=lambda: None); t.start(); t.join()
    """)
    assert out.returncode == 0, out.stdout
