"""The CLI's own error: a mistake the operator can fix, printed without a traceback."""


class CliError(Exception):
    pass
