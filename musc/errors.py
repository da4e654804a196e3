"""The one base class of everything a user can cause: a setting, a dataset, a file, an artifact,
a pool, a day. Each error says, in one line, which field or file and what to do; the command line
shows that line (and exit status 2) for every ``MuscError``, and a traceback only for anything else
(``musc --debug`` shows it for these too)."""


class MuscError(Exception):
    """Something the user can mend: the message is one line naming the field or file."""


class DatasetError(MuscError, ValueError):
    """The dataset cannot be read as asked; the message names the folder or file."""
