"""The `[notify]` section of the server config. SMTP itself is `[smtp]` (server.config.SmtpConfig)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    templates_dir: str | None = Field(
        default=None,
        description="folder of Jinja2 templates overriding the shipped ones (same file names, e.g. firing.txt.j2; "
        "partials _*.j2); relative to the config file. Checked at start: an unknown name or variable fails",
    )
    digest_threshold: int = Field(default=5, ge=2, description="this many notices for one recipient at once go out as one digest")
    eml_dir: str = Field(default="mail", description="without [smtp], emails are written here as .eml files (demo mode)")
    retry_initial_s: float = Field(default=30.0, gt=0, description="first retry delay after a failed send; doubles per failure")
    retry_max_s: float = Field(default=900.0, gt=0, description="longest retry delay")
    send_batch_max: int = Field(default=100, ge=1, description="most messages sent per delivery round")
