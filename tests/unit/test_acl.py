"""ACL users (acl.py) and the security config (security.py, config.py): rules, globs, passwords."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest

from proxy import acl
from proxy.commands import CommandSpec, UnroutableKeys, key_positions, lookup
from proxy.config import ConfigError, SentinelPoolConfig, parse
from proxy.security import parse_server_tls, parse_tls, parse_users


def _check(user: acl.User, *args: bytes) -> str | None:
    argv = [args[0].upper(), *args[1:]]
    spec = lookup(argv)
    assert isinstance(spec, CommandSpec), spec
    try:
        positions = key_positions(spec, argv)
    except UnroutableKeys:
        positions = []  # (as the client does: the command then fails on its own)
    return acl.check(user, spec.fullname, spec.name, argv, positions)


# --- command rules ----------------------------------------------------------------------


def test_rules_apply_in_order_from_nothing() -> None:
    assert acl.compile_commands([]) == frozenset()
    read = acl.compile_commands(["+@read"])
    assert "get" in read and "set" not in read
    rw = acl.compile_commands(["+@read", "+@write", "-@dangerous"])
    assert {"get", "set", "del"} <= rw
    assert "flushall" not in rw and "keys" not in rw  # both @dangerous
    assert acl.compile_commands(["+@all", "-flushall"]) == acl.ALL_COMMANDS - {"flushall"}
    assert acl.compile_commands(["allcommands", "nocommands", "+get"]) == {"get"}
    assert acl.compile_commands(["-@all", "+GET"]) == {"get"}  # names in any case


def test_a_container_rule_covers_its_subcommands_and_one_subcommand_alone() -> None:
    config = acl.compile_commands(["+config"])
    assert {"config|get", "config|set"} <= config
    only_get = acl.compile_commands(["+config|get"])
    assert "config|get" in only_get and "config|set" not in only_get
    assert "config|get" not in acl.compile_commands(["+config", "-config|get"])


def test_categories_come_from_redis_metadata() -> None:
    assert "string" in acl.CATEGORIES and "dangerous" in acl.CATEGORIES
    assert "get" in acl.compile_commands(["+@string"])
    assert "client|kill" in acl.compile_commands(["+@dangerous"])  # a subcommand's own category


@pytest.mark.parametrize(
    "rule, why",
    [
        ("+@nosuch", "unknown ACL category 'nosuch'"),
        ("+nosuchcommand", "unknown command 'nosuchcommand'"),
        ("+config|nosuch", "unknown command 'config|nosuch'"),
        ("get", "expected '+' or '-'"),
    ],
)
def test_bad_rules_are_named(rule: str, why: str) -> None:
    with pytest.raises(acl.RuleError, match=re.escape(why)):
        acl.compile_commands([rule])


# --- globs: Redis's stringmatchlen --------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, name, matches",
    [
        ("app1:*", "app1:x", True),
        ("app1:*", "app1:", True),
        ("app1:*", "app2:x", False),
        ("app1:*", "xapp1:x", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[abc]x", "bx", True),
        ("[abc]x", "dx", False),
        ("[^abc]x", "dx", True),
        ("[^abc]x", "ax", False),
        ("[a-c]x", "bx", True),
        ("[c-a]x", "bx", True),  # Redis swaps a reversed range
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("*", "", True),
        ("a.b", "aXb", False),  # no regular-expression leaks
        ("k*", "k\nx", True),  # * crosses newlines (keys are bytes)
    ],
)
def test_glob_matches_as_redis(pattern: str, name: str, matches: bool) -> None:
    assert acl.Glob(pattern).match(name.encode()) is matches
    assert (re.match(acl.glob_regex(pattern), name) is not None) is matches  # the same reading


@pytest.mark.parametrize(
    "pattern",
    ["*", "a*", "*b", "a*b", "*a*b*", "a?*[bc]*d", "[^x]*x*", "*:*:*:x", "a*a*a*a*b", "k\\**z"],
)
def test_glob_agrees_with_the_regular_expression_on_many_names(pattern: str) -> None:
    """``Glob`` (runs between stars, leftmost placement) and the backtracking regex agree."""
    rng = random.Random(pattern)
    regex = re.compile(acl.glob_regex(pattern).encode())
    glob = acl.Glob(pattern)
    for _ in range(3000):
        name = bytes(rng.choice(b"abcdx:*z") for _ in range(rng.randint(0, 12)))
        assert glob.match(name) is (regex.match(name) is not None), (pattern, name)


def test_a_long_key_against_many_stars_is_cheap() -> None:
    """A backtracking regex takes minutes here (it once froze the event loop); runs do not."""
    key = b"cache:" + b":user:" * 40000  # 240 KB
    assert not acl.Glob("cache:*:user:*:profile").match(key)
    assert not acl.Glob("*:*:*:x").match(key)
    assert acl.Glob("*:*:*:").match(key)


# --- checks -----------------------------------------------------------------------------


APP1 = acl.make_user(
    "app1",
    passwords=[acl.digest("pw")],
    commands=["+@read", "+@write", "-@dangerous", "+@pubsub"],
    keys=["app1:*", "~shared:*"],
    channels=["news.*", "&alerts"],
)


def test_commands_keys_and_channels_are_checked_with_redis_texts() -> None:
    assert _check(APP1, b"GET", b"app1:x") is None
    assert _check(APP1, b"set", b"shared:y", b"1") is None
    assert _check(APP1, b"GET", b"other") == acl.NOPERM_KEY
    assert _check(APP1, b"FLUSHALL") == "NOPERM this user has no permissions to run the 'flushall' command"
    assert _check(APP1, b"CONFIG", b"GET", b"x") == (
        "NOPERM this user has no permissions to run the 'config|get' command"
    )
    assert _check(APP1, b"PUBLISH", b"news.eu", b"m") is None
    assert _check(APP1, b"PUBLISH", b"sports", b"m") == acl.NOPERM_CHANNEL
    assert _check(APP1, b"SUBSCRIBE", b"alerts", b"news.x") is None
    assert _check(APP1, b"SUBSCRIBE", b"alerts", b"other") == acl.NOPERM_CHANNEL


def test_every_key_of_a_multi_key_command_is_checked() -> None:
    assert _check(APP1, b"MGET", b"app1:a", b"shared:b") is None
    assert _check(APP1, b"MGET", b"app1:a", b"secret") == acl.NOPERM_KEY
    assert _check(APP1, b"MSET", b"app1:a", b"1", b"secret", b"2") == acl.NOPERM_KEY
    assert _check(APP1, b"DEL", b"secret", b"app1:a") == acl.NOPERM_KEY
    assert _check(APP1, b"RENAME", b"app1:a", b"secret") == acl.NOPERM_KEY
    # the value of MSET is not a key: a value matching no pattern is fine
    assert _check(APP1, b"MSET", b"app1:a", b"anything") is None


def test_scripts_only_for_users_with_every_right() -> None:
    """A script runs with the proxy's rights on the server: no check of what it touches is
    possible here, so only a user who may do everything runs one."""
    scripter = acl.make_user("s", nopass=True, commands=["+@all"], keys=["allkeys"], channels=["*"])
    assert _check(scripter, b"EVAL", b"return 1", b"1", b"any") is None
    keyed = acl.make_user("k", nopass=True, commands=["+@all"], keys=["app1:*"], channels=["*"])
    for args in ((b"EVAL", b"return 1", b"1", b"app1:x"), (b"EVALSHA", b"a" * 40, b"0")):
        text = _check(keyed, *args)
        assert text is not None and text.startswith("NOPERM ") and "allkeys" in text
    assert (_check(keyed, b"FCALL", b"f", b"0") or "").startswith("NOPERM ")


def test_sort_by_and_get_patterns_need_every_key_as_in_redis() -> None:
    user = acl.make_user("k", nopass=True, commands=["+@all"], keys=["app1:*"])
    assert _check(user, b"SORT", b"app1:l") is None
    assert _check(user, b"SORT", b"app1:l", b"BY", b"nosort") is None  # no "*": no key read
    assert _check(user, b"SORT", b"app1:l", b"LIMIT", b"0", b"10", b"BY", b"w_*") == acl.SORT_BY_DENIED
    assert _check(user, b"SORT", b"app1:l", b"GET", b"#") == acl.SORT_GET_DENIED
    assert _check(user, b"SORT_RO", b"app1:l", b"ALPHA", b"GET", b"x_*") == acl.SORT_GET_DENIED


def test_psubscribe_patterns_must_be_granted_as_written() -> None:
    assert _check(APP1, b"PSUBSCRIBE", b"news.*") is None
    assert _check(APP1, b"PSUBSCRIBE", b"news.e*") == acl.NOPERM_CHANNEL  # matches, but not granted


def test_unrestricted_only_with_everything() -> None:
    assert acl.superuser().unrestricted
    assert not APP1.unrestricted
    everything = acl.make_user("a", nopass=True, commands=["+@all"], keys=["allkeys"], channels=["*"])
    assert everything.unrestricted
    assert not acl.make_user("b", nopass=True, commands=["+@all"], keys=["*"]).unrestricted  # no channels


# --- passwords and who may connect ----------------------------------------------------------


def test_passwords_by_digest_and_unknown_users_refused() -> None:
    users = acl.users_of(None, (APP1,))
    assert users.default is None  # users configured, no redis_auth: default is off
    assert users.authenticate(b"app1", b"pw") is APP1
    assert users.authenticate(b"app1", b"wrong") is None
    assert users.authenticate(b"nobody", b"pw") is None
    assert users.authenticate(b"default", b"") is None


def test_redis_auth_is_the_default_users_password() -> None:
    users = acl.users_of("secret", (APP1,))
    assert users.default is not None and users.default.unrestricted
    assert users.authenticate(b"default", b"secret") is users.default
    assert users.authenticate(b"default", b"nope") is None
    open_to_all = acl.users_of(None, ())
    assert open_to_all.default is not None and open_to_all.default.nopass
    assert open_to_all.authenticate(b"default", b"anything") is open_to_all.default


def test_a_configured_default_user_wins_over_redis_auth() -> None:
    default = acl.make_user("default", passwords=[acl.digest("d")], commands=["+@read"], keys=["*"])
    users = acl.users_of("other", (default,))
    assert users.default is default
    assert users.authenticate(b"default", b"d") is default
    assert users.authenticate(b"default", b"other") is None


# --- the config ---------------------------------------------------------------------------


def test_users_config_reads_every_password_form() -> None:
    digest = hashlib.sha256(b"hashed").hexdigest()
    users = parse_users(
        {
            "a": {"password": "p", "commands": "+@read +@write", "keys": ["a:*"]},
            "b": {"password_sha256": digest, "commands": ["+get"], "keys": ["allkeys"]},
            "c": {"passwords": ["one", "two"], "commands": ["+@all"]},
            "d": {"nopass": True, "commands": ["+ping"]},
        }
    )
    by = {u.name: u for u in users}
    assert by["a"].password_ok(b"p") and "set" in by["a"].commands
    assert by["b"].password_ok(b"hashed") and by["b"].all_keys
    assert by["c"].password_ok(b"one") and by["c"].password_ok(b"two") and not by["c"].password_ok(b"x")
    assert by["d"].password_ok(b"whatever")


@pytest.mark.parametrize(
    "body, why",
    [
        ({"a": {"commands": ["+get"]}}, "no password"),
        ({"a": {"password": "p", "commands": ["+@nosuch"]}}, "unknown ACL category"),
        ({"a": {"password_sha256": "abc"}}, "64 hex digits"),
        ({"a": {"password": "p", "keys": ["%R~x"]}}, "not supported"),
        ({"a": {"password": "p", "rights": []}}, "unknown key 'rights'"),
        ({"a b": {"password": "p"}}, "one word"),
        ([], "a mapping of user names"),
    ],
)
def test_bad_users_config_is_named(body: object, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_users(body)


def test_tls_config(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    cfg = parse_tls({"cert_file": str(cert), "key_file": str(key), "min_version": "TLSv1.3"})
    assert cfg.min_version == "TLSv1.3" and cfg.ca_file is None
    with pytest.raises(ValueError, match="key 'key_file': missing"):
        parse_tls({"cert_file": str(cert)})
    with pytest.raises(ValueError, match="cannot read"):
        parse_tls({"cert_file": str(tmp_path / "none.pem"), "key_file": str(key)})
    with pytest.raises(ValueError, match="min_version"):
        parse_tls({"cert_file": str(cert), "key_file": str(key), "min_version": "SSLv3"})
    assert parse_server_tls(True).verify
    with pytest.raises(ValueError, match="go together"):
        parse_server_tls({"cert_file": str(cert)})


def test_pool_and_listener_security_keys(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    text = f"""
pools:
  a:
    listen: 127.0.0.1:7000
    servers: ["127.0.0.1:6379:1"]
    redis_auth: pw
    redis_username: app
    tls: {{cert_file: {cert}, key_file: {key}}}
    server_tls: {{verify: false}}
    users:
      u1: {{password: x, commands: [+@read], keys: ["u1:*"]}}
  s:
    distribution: sentinel
    sentinels: ["127.0.0.1:26379"]
    master_name: m
    redis_auth: pw
    sentinel_auth: spw
    sentinel_username: sent
    sentinel_tls: true
listeners:
  front:
    listen: 127.0.0.1:7001
    default_pool: a
    routes: [{{prefix: "x:", pool: s}}]
    tls: {{cert_file: {cert}, key_file: {key}, ca_file: {cert}}}
    users:
      u2: {{password: y, commands: [+get]}}
metrics:
  listen: 9122
  token: abcdefghijklmnopq
"""
    config = parse(text)
    a, s = config.pools
    assert a.redis_username == "app" and a.tls is not None and a.server_tls is not None
    assert not a.server_tls.verify and [u.name for u in a.users] == ["u1"]
    assert isinstance(s, SentinelPoolConfig)
    assert s.sentinel_username == "sent" and s.sentinel_tls is not None
    (front,) = config.listeners
    assert front.tls is not None and front.tls.ca_file == str(cert) and front.users[0].name == "u2"
    assert config.metrics_listen is not None and config.metrics_listen.host == "127.0.0.1"
    assert config.metrics_token == "abcdefghijklmnopq"


@pytest.mark.parametrize(
    "keys, why",
    [
        ("redis_username: app", "needs redis_auth"),
        ("users: {u: {commands: [+get]}}", "key 'users': user 'u': no password"),
        ("server_tls: {verify: maybe}", "key 'server_tls': key 'verify'"),
        ("tls: {cert_file: /nonexistent.pem, key_file: /nonexistent.pem}", "key 'tls': key 'cert_file'"),
        ("sentinel_tls: true", "only used with distribution: sentinel"),
    ],
)
def test_security_config_errors_name_pool_and_key(keys: str, why: str) -> None:
    text = f"""
pools:
  a:
    listen: 127.0.0.1:7000
    servers: ["127.0.0.1:6379:1"]
    {keys}
"""
    with pytest.raises(ConfigError, match=re.escape(why)) as caught:
        parse(text)
    assert "pool 'a'" in str(caught.value)


def test_metrics_token_must_be_long_enough() -> None:
    pools = 'pools: {a: {listen: "127.0.0.1:7000", servers: ["127.0.0.1:6379:1"]}}\n'
    text = pools + "metrics: {listen: 9, token: short}\n"
    with pytest.raises(ConfigError, match="16 characters"):
        parse(text)
