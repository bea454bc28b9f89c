"""The server's HTTP layer and the officers' console (the `web` role); see `server.web.app` and docs/console.md."""
