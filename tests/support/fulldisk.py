"""A real full disk for a test: a small tmpfs in a private mount namespace.

`on_small_disk(dir, size, argv)` is the command line that runs `argv` with a tmpfs of `size` bytes
mounted on `dir`, seen by that process only. The mount goes away with the process, whatever
happens to the test, so nothing is left mounted. As root it uses a mount namespace; otherwise a user
namespace maps the user to root inside it (tmpfs may be mounted there). `unshare` is util-linux's,
in every Debian base system.
"""

from __future__ import annotations

import os
from pathlib import Path


def on_small_disk(mountpoint: Path, size_bytes: int, argv: list[str]) -> list[str]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    ns = (["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0
          else ["unshare", "--user", "--map-root-user", "--mount"])
    script = 'mount -t tmpfs -o size="$1",mode=0700 greenmine-test "$2" && shift 2 && exec "$@"'
    return [*ns, "sh", "-c", script, "sh", str(size_bytes), str(mountpoint), *argv]
