"""Text that came from the user's data (class folder names, file names) shown safely: on the
console with its control characters escaped, so that a name with a newline or an escape
sequence cannot break a line or restyle the terminal."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """`text` with every control character (newline, tab, escape, ...) written as \\xNN."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))
