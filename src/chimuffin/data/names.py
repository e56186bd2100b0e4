"""File names DVC cannot hash: names that are not valid UTF-8, and how to rename them.

Archives made on other systems often hold names in a legacy encoding (b'caf\\xe9.jpg', Latin-1
for 'café.jpg'). Python reads such a name with surrogate escapes; DVC then fails while hashing
the dataset folder (`'utf-8' codec can't encode character '\\udce9' ... surrogates not
allowed`), before `prepare` runs, without naming the file. Everything here works on the raw
bytes of names, never touches the files, and returns text that is itself valid UTF-8.
"""

from __future__ import annotations

import os
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BadName:
    path: bytes  # as found: the folder given, joined with the path below it
    rel: bytes  # below the folder given
    new_name: str  # a suggested valid UTF-8 name for the last component

    @property
    def shown(self) -> str:
        """The path below the folder, invalid bytes escaped: train128/undefined/caf\\xe9.jpg."""
        return escaped(self.rel)

    @property
    def target(self) -> bytes:
        return os.path.join(os.path.dirname(self.path), os.fsencode(self.new_name))

    def mv_command(self) -> str:
        """A bash command that renames it (never overwriting: mv -n)."""
        return f"mv -n -- {shell_quote(self.path)} {shell_quote(self.target)}"


def is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def escaped(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def shell_quote(raw: bytes) -> str:
    """Plain shell quoting for a valid UTF-8 path, $'...' for one that is not."""
    return shlex.quote(raw.decode("utf-8")) if is_utf8(raw) else ansi_c_quote(raw)


def ansi_c_quote(raw: bytes) -> str:
    """bash's $'...' quoting: the exact bytes, invalid ones as \\xHH, valid UTF-8 as is."""
    out = []
    for ch in raw.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried as a surrogate
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def readable_name(raw: bytes) -> str:
    """The name as the legacy encoding most archives use would show it (Windows-1252, which
    covers Latin-1's letters; Latin-1 for the bytes it leaves undefined), NFC-normalised, with
    control characters replaced by '_'."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = unicodedata.normalize("NFC", text)
    return "".join("_" if unicodedata.category(c) == "Cc" or c == "/" else c for c in text)


def unique_name(name: str, taken: set[bytes]) -> str:
    """name, or name_2, name_3... (before the suffix) if a sibling already has it."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while os.fsencode(candidate) in taken:
        n += 1
        candidate = f"{stem}_{n}{suffix}"
    return candidate


def find_bad_names(root: str | Path) -> list[BadName]:
    """Every file or folder under root whose own name is not valid UTF-8, deepest first (the
    order in which renaming them one by one keeps the later paths valid)."""
    top = os.fsencode(str(root))
    found: list[BadName] = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        siblings = set(dirs) | set(files)
        taken = set(siblings)
        for name in sorted(dirs + files):
            if is_utf8(name):
                continue
            new = unique_name(readable_name(name), taken)
            taken.add(os.fsencode(new))
            path = os.path.join(folder, name)
            found.append(BadName(path, os.path.relpath(path, top), new))
    return sorted(found, key=lambda b: (-b.rel.count(b"/"), b.rel))


def count_entries(root: str | Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(os.fsencode(str(root))))
