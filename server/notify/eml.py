"""Demo mode: emails are written as .eml files to a folder instead of being sent."""

from __future__ import annotations

import os
import re
from email.message import EmailMessage
from pathlib import Path

from greenmine.server.notify.errors import TransientSendError


class EmlDirTransport:
    def __init__(self, folder: str | Path, sender: str = "greenmine@localhost") -> None:
        self.folder = Path(folder)
        self.sender = sender

    def send(self, msg: EmailMessage) -> dict:
        # named after the Message-ID, so a re-send after a crash overwrites the same file
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(msg["Message-ID"]).strip("<>")) + ".eml"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / (name + ".tmp")
            # 0600, like the state files: an email names the officers and the site's readings
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(msg))
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            raise TransientSendError(f"cannot write {self.folder / name}: {exc}") from exc
        return {}
