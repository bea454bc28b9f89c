"""greenmine: the distribution's own package.

It holds what belongs to the whole product rather than one part of it: the
version, the console script's dispatch (`greenmine.cli`), where the shipped
example configs and device profiles live, and the foundation every part shares
(standard library and pydantic only): the config base (`configbase`) and file
loading (`configfile`), the clock, logging set-up, the durable SQLite helper
(`sqlite`), back-off (`backoff`) and the log-once latch (`latch`). The parts
themselves are installed beside it as `greenmine.schemas`, `greenmine.agent`,
`greenmine.server` and `greenmine.simulators` (see README.md, "Layout").
"""

from importlib.metadata import PackageNotFoundError, version as _version
import sys
from pathlib import Path

try:
    __version__ = _version("greenmine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"


def _config_dir() -> Path:
    """The shipped `config/` folder: example configs, device profiles, scenarios.

    In a source checkout or an editable install it is the repository's own;
    a wheel install puts a copy under <prefix>/share/greenmine/config.
    """
    source = Path(__file__).resolve().parent.parent / "config"
    if (source / "profiles").is_dir():
        return source
    return Path(sys.prefix) / "share" / "greenmine" / "config"


CONFIG_DIR = _config_dir()
PROFILES_DIR = CONFIG_DIR / "profiles"
SCENARIOS_DIR = CONFIG_DIR / "scenarios"
