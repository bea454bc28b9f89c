"""Errors of the notification path.

    NotifyError(Exception)
    ├── TemplateError          a template is missing a field or cannot be read or rendered
    ├── BuildError             an outbox row cannot be made into a message (a header that is not one line)
    └── SendError              a message could not be handed to the mail relay
        ├── TransientSendError   relay down, timeout, 4xx: the outbox keeps it and retries
        └── PermanentSendError   5xx for every recipient, bad address: recorded as failed, not retried
"""


class NotifyError(Exception):
    pass


class TemplateError(NotifyError):
    pass


class BuildError(NotifyError):
    pass


class SendError(NotifyError):
    pass


class TransientSendError(SendError):
    pass


class PermanentSendError(SendError):
    pass
