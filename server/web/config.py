"""The `[web]` section: the officers' console (`greenmine server run --role web`)."""

from __future__ import annotations

from pydantic import Field

from greenmine.configbase import ConfigModel


class WebConfig(ConfigModel):
    host: str = Field(default="127.0.0.1", description="address the console binds to; put nginx with TLS in front (docs/console.md)")
    port: int = Field(default=8470, ge=0, le=65535, description="console port; 0: any free port")
    users_db: str = Field(
        default="users.sqlite",
        description="the server's database of users, API tokens and the audit log; relative to the config file",
    )
    public_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="the console's address as officers reach it (e.g. https://console.example.cn); "
        "emails link each alert id to <public_url>/alerts/<id>",
    )
    metrics_public: bool = Field(
        default=True, description="/metrics and GET /alerts answer without a token (false: a session or API token is needed)",
    )
    secure_cookies: bool = Field(
        default=False, description="mark the session cookie Secure (set it when the console is served over HTTPS)",
    )
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="a login lasts this long")
    login_max_failures: int = Field(default=5, ge=1, description="failed logins per user name or client address within login_window_s before login is refused")
    login_window_s: float = Field(default=300.0, gt=0, description="window (and lock-out time) of the login rate limit")
    default_lang: str = Field(default="zh", pattern=r"^(zh|en)$", description="language of the pages: zh (default) or en; each user can switch")
    export_max_days: int = Field(default=93, ge=1, description="longest range one CSV export may cover")


def web_config(cfg) -> WebConfig:
    """The config's [web] section, or its defaults when the section is absent (CLI tools)."""
    return cfg.web if getattr(cfg, "web", None) is not None else WebConfig()
