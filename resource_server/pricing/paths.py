"""Route path patterns: literal segments, `{name}` (exactly one segment, captured) and `*` (the rest of the
path, slashes included, possibly empty)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PathPattern:
    pattern: str
    regex: re.Pattern[str]
    names: tuple[str, ...]

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(path)
        return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


def compile_pattern(pattern: str) -> PathPattern:
    if not pattern.startswith("/"):
        raise PatternError(f"path pattern {pattern!r} must start with '/'")
    parts: list[str] = []
    names: list[str] = []
    for i, segment in enumerate(pattern.split("/")[1:]):
        if segment == "*":
            if i != pattern.count("/") - 1:
                raise PatternError(f"path pattern {pattern!r}: '*' may only be the last segment")
            parts.append("*")
            continue
        m = _NAME.fullmatch(segment)
        if m is not None:
            if m[1] in names:
                raise PatternError(f"path pattern {pattern!r} repeats {{{m[1]}}}")
            names.append(m[1])
            parts.append(f"(?P<{m[1]}>[^/]+)")
        elif "{" in segment or "}" in segment or "*" in segment:
            raise PatternError(
                f"path pattern {pattern!r}: segment {segment!r} must be literal, {{name}} or a whole '*'"
            )
        else:
            parts.append(re.escape(segment))
    # "/files/*" also matches "/files" itself: the star may be empty, and so may its slash.
    regex = "/" + "/".join(parts[:-1]) + "(?:/.*)?" if parts[-1:] == ["*"] else "/" + "/".join(parts)
    if regex.startswith("/(?:"):
        regex = regex[1:]
    return PathPattern(pattern, re.compile(regex), tuple(names))
