"""The one exception type for user mistakes: the CLI prints it without a traceback."""


class UserError(Exception):
    """A problem with the user's input (file, setting, data) that they can fix.

    The message names the file or setting and says what to do about it.
    """
