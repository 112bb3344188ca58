"""How the CLI shows text it did not write (file names, messages, source excerpts): literally,
with control characters escaped, bounded in length, and escaped for GitHub workflow commands.

Rich interprets `[...]` as markup and `:name:` as emoji in plain strings; the CLI passes user
text to rich only as `Text` objects, so nothing here needs to know about rich."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the bidirectional overrides that can reorder what a reader sees, and
# lone surrogates (undecodable bytes of a file name), which no terminal encoding can print.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match) -> str:
    ch = match.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def literal(text: object) -> str:
    """One line of user text, e.g. a file name: every control character (newline included) escaped."""
    return _CONTROL.sub(_escape_one, str(text))


def literal_block(text: object) -> str:
    """Several lines, e.g. a rendered error: line breaks kept, every other control character escaped."""
    return _CONTROL_BUT_NEWLINE.sub(_escape_one, str(text))


def bounded(text: str, limit: int) -> str:
    """At most `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def bounded_lines(text: str, width: int) -> str:
    """Each line of a block cut to `width` characters (a source excerpt can be one huge line)."""
    return "\n".join(bounded(line, width) for line in text.split("\n"))


def github_data(text: str) -> str:
    """The message part of a workflow command (`::error ...::DATA`): GitHub's escapes for `%`, CR
    and LF (so GitHub shows the original text), then any other control character shown escaped."""
    return literal(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def github_property(text: str) -> str:
    """A property value of a workflow command (`file=VALUE`): data escaping plus `:` and `,`."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")
