"""ACL users at the proxy: who may run which commands on which keys and channels (pure, leaf).

A user is what a ``users:`` entry of a pool or listener says, in Redis's ACL terms:

* ``commands``: rules applied in order from nothing, as ``ACL SETUSER`` takes them:
  ``+@read``, ``-@dangerous``, ``+get``, ``-flushall``, ``+config|get``, ``allcommands``
  (``+@all``), ``nocommands`` (``-@all``); categories are Redis's own, read from the command
  table's metadata (``command_data``);
* ``keys``: glob patterns (``app1:*``; a leading ``~`` is accepted), matched as Redis's
  ``stringmatchlen`` does (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes); ``allkeys`` = ``*``;
* ``channels``: the same for pub/sub channels (a leading ``&`` accepted; ``allchannels``).
  PSUBSCRIBE patterns must be allowed literally, as in Redis.

Like a new Redis user, a user has nothing it is not granted. Passwords are kept as SHA-256
digests and compared in constant time. Refusals carry Redis 7's own ``-NOPERM`` texts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from proxy import command_data

NOPERM_COMMAND = "NOPERM this user has no permissions to run the '{}' command"
NOPERM_KEY = "NOPERM this user has no permissions to access one of the keys used as arguments"
NOPERM_CHANNEL = "NOPERM this user has no permissions to access one of the channels used as arguments"

SORT_BY_DENIED = "ERR BY option of SORT denied due to insufficient ACL permissions."
SORT_GET_DENIED = "ERR GET option of SORT denied due to insufficient ACL permissions."
# A script runs on the server as the proxy's own user: what it touches cannot be checked here.
SCRIPT_DENIED = (
    "NOPERM this user has no permissions to run the '{}' command through the proxy: a script runs "
    "on the servers with the proxy's rights, not this user's, so scripts are served only to users "
    "with allcommands, allkeys and allchannels"
)
SCRIPT_COMMANDS = frozenset({b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"})
SORT_COMMANDS = frozenset({b"SORT", b"SORT_RO"})

# Commands whose arguments after the name are channels (PSUBSCRIBE: patterns), not keys.
CHANNEL_COMMANDS = {b"SUBSCRIBE": 1, b"SSUBSCRIBE": 1, b"PSUBSCRIBE": 1, b"PUBLISH": 1, b"SPUBLISH": 1}
ONE_CHANNEL = frozenset({b"PUBLISH", b"SPUBLISH"})
# Leaving channels needs no right to them (their arguments are channels, not keys).
UNSUBSCRIBE_COMMANDS = frozenset({b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"})


class RuleError(ValueError):
    """A ``commands``/``keys``/``channels`` rule the proxy cannot read (the message says why)."""


def _table() -> dict[str, tuple[str, ...]]:
    """Every command's and subcommand's full name ("get", "config|get") and its categories."""
    out: dict[str, tuple[str, ...]] = {}
    for name, row in command_data.COMMANDS.items():
        subs = command_data.SUBCOMMANDS.get(name)
        lower = name.decode().lower()
        out[lower] = tuple(str(c)[1:] for c in row[6])
        for sub, sub_row in (subs or {}).items():
            out[f"{lower}|{sub.decode().lower()}"] = tuple(str(c)[1:] for c in sub_row[6])
    return out


COMMANDS: dict[str, tuple[str, ...]] = _table()
CATEGORIES: frozenset[str] = frozenset(c for cats in COMMANDS.values() for c in cats) | {"all"}
ALL_COMMANDS: frozenset[str] = frozenset(COMMANDS)


def _members(rule: str) -> frozenset[str]:
    """The full names one ``+x``/``-x`` rule names (a container: all its subcommands)."""
    word = rule[1:].lower()
    if word.startswith("@"):
        cat = word[1:]
        if cat not in CATEGORIES:
            raise RuleError(f"unknown ACL category '{cat}' in {rule!r}")
        if cat == "all":
            return ALL_COMMANDS
        return frozenset(n for n, cats in COMMANDS.items() if cat in cats)
    if word not in COMMANDS:
        raise RuleError(f"unknown command '{word}' in {rule!r}")
    if "|" in word:
        return frozenset({word})
    return frozenset(n for n in COMMANDS if n == word or n.startswith(word + "|"))


def compile_commands(rules: Sequence[str]) -> frozenset[str]:
    """The full names a user may run after ``rules``, applied in order from none."""
    allowed: set[str] = set()
    for rule in rules:
        if not isinstance(rule, str) or not rule.strip():
            raise RuleError(f"expected a rule such as '+@read' or '-flushall', got {rule!r}")
        rule = rule.strip()
        low = rule.lower()
        if low == "allcommands":
            allowed = set(ALL_COMMANDS)
        elif low == "nocommands":
            allowed = set()
        elif rule[0] == "+":
            allowed |= _members(rule)
        elif rule[0] == "-":
            allowed -= _members(rule)
        else:
            raise RuleError(f"expected '+' or '-' before a command or @category, got {rule!r}")
    return frozenset(allowed)


def _glob_tokens(pattern: str) -> list[str | None]:
    """A Redis glob (``stringmatchlen``) as regular-expression pieces of one character each,
    None for each ``*``."""
    out: list[str | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(None)
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                    items.append(re.escape(pattern[j]))
                elif j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 2
                else:
                    items.append(re.escape(pattern[j]))
                j += 1
            # (Redis: an unclosed "[" runs to the end of the pattern)
            body = "".join(items)
            out.append(f"[^{body}]" if negate else f"[{body}]" if body else "(?!)")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return out


def glob_regex(pattern: str) -> str:
    """A Redis glob as one anchored regular expression (for reading; ``Glob`` matches)."""
    return "(?s:" + "".join(".*" if t is None else t for t in _glob_tokens(pattern)) + r")\Z"


class Glob:
    """One Redis glob, matched in time linear in the name for each run between ``*``s.

    The pattern is cut at its ``*``s into runs of fixed width: the first must match at the
    start, the last at the end, and each one between at its leftmost place after the previous
    (which is where a glob match can always put it). No backtracking regular expression: a
    long key against ``*:*:*:x`` costs a few scans, not minutes of the event loop."""

    __slots__ = ("_first", "_first_len", "_middle", "_last", "_last_len", "_starred")

    def __init__(self, pattern: str) -> None:
        runs: list[list[str]] = [[]]
        for token in _glob_tokens(pattern):
            if token is None:
                runs.append([])
            else:
                runs[-1].append(token)

        def compiled(run: list[str]) -> re.Pattern[bytes]:
            return re.compile(("(?s:" + "".join(run) + ")").encode("utf-8", "surrogateescape"))

        self._starred = len(runs) > 1
        self._first, self._first_len = compiled(runs[0]), len(runs[0])
        self._last, self._last_len = compiled(runs[-1]), len(runs[-1])
        self._middle = [compiled(run) for run in runs[1:-1] if run]

    def match(self, name: bytes) -> bool:
        if not self._starred:
            return self._first.fullmatch(name) is not None
        end = len(name) - self._last_len
        if end < self._first_len or self._first.match(name) is None or self._last.match(name, end) is None:
            return False
        at = self._first_len
        for run in self._middle:
            found = run.search(name, at, end)
            if found is None:
                return False
            at = found.end()
        return True


def _patterns(rules: Sequence[str], sigil: str, everything: str) -> tuple[bool, tuple[str, ...]]:
    """(all allowed, patterns) from a ``keys`` or ``channels`` list."""
    found = []
    for rule in rules:
        if not isinstance(rule, str) or not rule:
            raise RuleError(f"expected a glob pattern such as 'app1:*', got {rule!r}")
        if rule.lower() == everything:
            return True, ()
        if rule.startswith("%"):
            raise RuleError(f"{rule!r}: read/write key selectors (%R~, %W~) are not supported")
        pattern = rule[1:] if rule.startswith(sigil) else rule
        if pattern == "*":
            return True, ()
        found.append(pattern)
    return False, tuple(found)


@dataclass(frozen=True, slots=True)
class User:
    """One user: its password digests and rights (frozen: configs compare by value)."""

    name: str
    passwords: tuple[bytes, ...] = ()  # SHA-256 digests
    nopass: bool = False  # any password (or none) will do, as Redis's ``nopass``
    commands: frozenset[str] = frozenset()
    all_keys: bool = False
    keys: tuple[str, ...] = ()
    all_channels: bool = False
    channels: tuple[str, ...] = ()

    @property
    def unrestricted(self) -> bool:
        """Every command on every key and channel (no check needed: the fast path serves it)."""
        return self.all_keys and self.all_channels and self.commands == ALL_COMMANDS

    def password_ok(self, password: bytes) -> bool:
        """Constant-time comparison with every stored digest."""
        given = hashlib.sha256(password).digest()
        ok = self.nopass
        for digest in self.passwords or (b"\0" * 32,):
            ok |= hmac.compare_digest(given, digest) and bool(self.passwords)
        return ok


def make_user(
    name: str,
    *,
    passwords: Sequence[bytes] = (),
    nopass: bool = False,
    commands: Sequence[str] = (),
    keys: Sequence[str] = (),
    channels: Sequence[str] = (),
) -> User:
    """A user from its config rules (raises RuleError with what is wrong)."""
    all_keys, key_patterns = _patterns(keys, "~", "allkeys")
    all_channels, channel_patterns = _patterns(channels, "&", "allchannels")
    for pattern in key_patterns + channel_patterns:
        Glob(pattern)
    return User(
        name=name,
        passwords=tuple(passwords),
        nopass=nopass,
        commands=compile_commands(commands),
        all_keys=all_keys,
        keys=key_patterns,
        all_channels=all_channels,
        channels=channel_patterns,
    )


def digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def superuser(name: str = "default", password: str | None = None) -> User:
    """Redis's ``default`` user: everything, with ``redis_auth`` as its password (or nopass)."""
    return User(
        name=name,
        passwords=(digest(password),) if password is not None else (),
        nopass=password is None,
        commands=ALL_COMMANDS,
        all_keys=True,
        all_channels=True,
    )


@lru_cache(maxsize=256)
def _globs(patterns: tuple[str, ...]) -> tuple[Glob, ...]:
    return tuple(Glob(p) for p in patterns)


def _matches(patterns: tuple[str, ...], name: bytes) -> bool:
    return any(glob.match(name) for glob in _globs(patterns))


@dataclass(frozen=True, slots=True)
class Users:
    """The users of one pool or listener: its ``users:`` and the ``default`` user."""

    by_name: dict[str, User]
    default: User | None  # None: disabled (clients must AUTH as a named user)

    def authenticate(self, name: bytes, password: bytes) -> User | None:
        """The user ``name`` if ``password`` is its password (constant time), else None."""
        user = self.by_name.get(name.decode("utf-8", "replace"))
        if user is None:
            superuser("-", "").password_ok(password)  # the same work as for a known user
            return None
        return user if user.password_ok(password) else None


@lru_cache(maxsize=128)
def users_of(redis_auth: str | None, users: tuple[User, ...]) -> Users:
    """Who may connect: the configured ``users``, and ``default`` as Redis has it: with
    ``redis_auth`` as its password, or open to all when neither is configured. When users are
    configured without a ``default`` entry and without ``redis_auth``, ``default`` is off."""
    by_name = {u.name: u for u in users}
    default = by_name.get("default")
    if default is None:
        if redis_auth is not None:
            default = superuser("default", redis_auth)
        elif not users:
            default = superuser("default")
        if default is not None:
            by_name["default"] = default
    return Users(by_name=by_name, default=default)


def check(user: User, fullname: str, name: bytes, args: Sequence[bytes], keys: Sequence[int]) -> str | None:
    """The -NOPERM text if ``user`` may not run this command (its keys at ``keys``), else None."""
    if fullname not in user.commands:
        return NOPERM_COMMAND.format(fullname)
    if name in UNSUBSCRIBE_COMMANDS:
        return None
    where = CHANNEL_COMMANDS.get(name)
    if where is not None:
        if user.all_channels:
            return None
        channels = args[1:2] if name in ONE_CHANNEL else args[1:]
        if name == b"PSUBSCRIBE":  # a pattern must be granted as it is written
            granted = {p.encode("utf-8", "surrogateescape") for p in user.channels}
            if any(c not in granted for c in channels):
                return NOPERM_CHANNEL
        elif not all(_matches(user.channels, c) for c in channels):
            return NOPERM_CHANNEL
        return None
    if not user.all_keys and keys and not all(_matches(user.keys, args[i]) for i in keys):
        return NOPERM_KEY
    if name in SCRIPT_COMMANDS and not user.unrestricted:  # (after its declared keys, as Redis)
        return SCRIPT_DENIED.format(fullname)
    if name in SORT_COMMANDS and not user.all_keys:
        return _sort_patterns(args)
    return None


def _sort_patterns(args: Sequence[bytes]) -> str | None:
    """SORT's BY and GET read keys their patterns name: only for users with every key (Redis)."""
    i = 2
    while i < len(args) - 1:
        option = args[i].upper()
        if option == b"BY":
            if b"*" in args[i + 1]:
                return SORT_BY_DENIED
            i += 2
        elif option == b"GET":
            return SORT_GET_DENIED
        elif option == b"LIMIT":
            i += 3
        elif option == b"STORE":
            i += 2
        else:
            i += 1
    return None
