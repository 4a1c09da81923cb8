"""Issue 13, "The command line", through the real console script.

A usage error is one line on stderr and exit status 2, never a traceback;
a refused command creates nothing; passwd takes a key file; dump prints
strict JSON for every kind of value, records and objects included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.ebs import KdfParams

BIN = str(Path(sys.executable).parent / "persist")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PERSIST_PASSPHRASE", None)
    return env


def assert_usage_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A directory with a passphrase file, a 31-byte and a 32-byte key file, and a store."""
    (tmp_path / "pw").write_text("the passphrase\n")
    (tmp_path / "new").write_text("the new passphrase\n")
    (tmp_path / "key31").write_bytes(os.urandom(31))
    (tmp_path / "key32").write_bytes(os.urandom(32))
    with persist.open(
        str(tmp_path / "s.db"),
        "the passphrase",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
    ) as db:
        db.table("t")["k"] = "v"
    return tmp_path


def opts(home: Path, *extra: str) -> list[str]:
    return ["--passphrase-file", str(home / "pw"), "--allow-weak-kdf", "--no-freshness", *extra]


USAGE_ERRORS = {  # name: (words the one line must hold, arguments)
    "kdf memory below the floor": ("KDF parameters", "init", "{new}", "--passphrase-file", "{pw}",
                                   "--no-freshness", "--kdf-memory-mib", "8"),
    "kdf time below the floor": ("KDF parameters", "init", "{new}", "--passphrase-file", "{pw}",
                                 "--no-freshness", "--kdf-time", "1"),
    "kdf lanes above the ceiling": ("KDF parameters", "init", "{new}", "--passphrase-file", "{pw}",
                                    "--no-freshness", "--kdf-parallelism", "99"),
    "31-byte key file at init": ("32 raw bytes", "init", "{new}", "--key-file", "{key31}",
                                 "--no-freshness"),
    "31-byte key file at verify": ("32 raw bytes", "verify", "{db}", "--key-file", "{key31}",
                                   "--no-freshness"),
    "31-byte key file at passwd": ("32 raw bytes", "passwd", "{db}", "--key-file", "{key31}",
                                   "--no-freshness", "--new-passphrase-file", "{pw}"),
    "missing key file": ("cannot read key file", "info", "{db}", "--key-file", "{home}/nokey",
                         "--no-freshness"),
    "relative leveldb path": ("absolute path", "verify", "leveldb://relative/path", "{opts}"),
    "relative leveldb path at init": ("absolute path", "init", "leveldb://rel", "{opts}"),
    "unknown scheme": ("unknown store location scheme", "info", "foo://x", "{opts}"),
    "reserved table": ("may not start with '__'", "dump", "{db}", "__objects__", "{opts}"),
    "empty table name": ("table names are 1-200 bytes", "dump", "{db}", "", "{opts}"),
    "nonexistent table": ("no table named 'nosuch'", "dump", "{db}", "nosuch", "{opts}"),
    "unwritable freshness at init": ("--freshness", "init", "{new}", "--passphrase-file", "{pw}",
                                     "--weak-kdf-for-tests", "--freshness", "/proc/persist-x"),
    "freshness and no-freshness": ("not both", "info", "{db}", "--passphrase-file", "{pw}",
                                   "--freshness", "{home}/f", "--no-freshness"),
    "unknown command": ("No such command", "bogus"),
    "missing argument": ("Missing argument", "verify"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS))
def test_usage_error_is_one_line_and_exit_2(home: Path, case: tuple[str, ...]) -> None:
    words, *args = case
    subst = {
        "db": str(home / "s.db"),
        "new": str(home / "new.db"),
        "pw": str(home / "pw"),
        "key31": str(home / "key31"),
        "home": str(home),
    }
    argv: list[str] = []
    for a in args:
        if a == "{opts}":
            argv += opts(home)
        else:
            argv.append(a.format(**subst))
    before = created(home)
    assert_usage_error(run(*argv), words)
    assert created(home) == before  # a refused command creates nothing


def created(home: Path) -> list[str]:
    """The files in ``home`` but those of the existing store (a reader may add
    the store's -wal and -shm)."""
    return sorted(f for f in os.listdir(home) if not f.startswith("s.db"))


def test_init_with_bad_options_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pw\n")
    for bad in (["--kdf-memory-mib", "8"], ["--key-file", "/nonexistent"], ["--kdf-time", "99"]):
        cred = [] if "--key-file" in bad else ["--passphrase-file", str(tmp_path / "pw")]
        out = run("init", str(tmp_path / "n.db"), *cred, "--no-freshness", *bad)
        assert_usage_error(out)
        assert sorted(os.listdir(tmp_path)) == ["pw"]
        out = run("init", f"leveldb://{tmp_path / 'n'}", *cred, "--no-freshness", *bad)
        assert_usage_error(out)
        assert sorted(os.listdir(tmp_path)) == ["pw"]


@pytest.mark.parametrize("command", ["passwd", "rekey", "info", "verify", "dump"])
def test_commands_on_a_missing_store_create_nothing(home: Path, command: str) -> None:
    before = created(home)
    extra = ["--new-passphrase-file", str(home / "new")] if command == "passwd" else []
    for where in (str(home / "missing.db"), f"leveldb://{home / 'missing'}"):
        out = run(command, where, *opts(home, *extra))
        assert out.returncode == 2 and "StoreNotFound" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert created(home) == before  # no file, no -wal, -shm or -lock


def test_passwd_with_a_key_file_uses_the_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(os.urandom(32))
    (tmp_path / "new").write_text("a new passphrase\n")
    db = str(tmp_path / "k.db")
    common = ["--allow-weak-kdf", "--no-freshness"]
    assert run("init", db, "--key-file", str(tmp_path / "key"), *common).returncode == 0
    out = run(
        "passwd", db, "--key-file", str(tmp_path / "key"), *common,
        "--new-passphrase-file", str(tmp_path / "new"), "--weak-kdf-for-tests",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "persist rekey" in out.stdout and "no longer" not in out.stdout
    assert run("info", db, "--passphrase-file", str(tmp_path / "new"), *common).returncode == 0
    out = run("info", db, "--key-file", str(tmp_path / "key"), *common)
    assert out.returncode == 2 and "WrongPassphrase" in out.stderr


def test_passwd_says_what_rekey_is_for(home: Path) -> None:
    out = run("passwd", str(home / "s.db"), *opts(home, "--new-passphrase-file", str(home / "new")))
    assert out.returncode == 0, out.stderr
    assert "no longer" not in out.stdout
    assert "old keyslot" in out.stdout and "persist rekey" in out.stdout


def test_verify_of_a_weak_kdf_store_without_the_flag_is_an_open_failure(home: Path) -> None:
    out = run("verify", str(home / "s.db"), "--passphrase-file", str(home / "pw"), "--no-freshness")
    assert_usage_error(out, "weak KDF")
    assert "problems" not in out.stdout
    # the same store with the flag verifies, and a damaged keyslot stays a finding
    assert run("verify", str(home / "s.db"), *opts(home)).returncode == 0


def test_a_missing_driver_names_its_extra(tmp_path: Path) -> None:
    """A leveldb:// location without plyvel (or plyvel-next): a clear error naming the extra."""
    hide = "import sys; sys.modules['plyvel'] = None; sys.modules['plyvel_next'] = None; "
    lib = subprocess.run(
        [
            sys.executable,
            "-c",
            hide + f"import persist; persist.open('leveldb://{tmp_path}/l', 'pw')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lib.returncode == 1 and "ImportError" in lib.stderr
    assert "pip install 'persist-store[leveldb]'" in lib.stderr
    (tmp_path / "pw").write_text("pw\n")
    cli = subprocess.run(
        [
            sys.executable, "-c", hide + "from persist.cli import main; main()",
            "init", f"leveldb://{tmp_path}/l", "--passphrase-file", str(tmp_path / "pw"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert_usage_error(cli, "persist-store[leveldb]")
    assert sorted(os.listdir(tmp_path)) == ["pw"]
    with pytest.raises(subprocess.CalledProcessError):  # and SQLite needs no LevelDB
        subprocess.run(
            [sys.executable, "-c", hide + "import persist.kvs.leveldb"], check=True,
            capture_output=True,
        )  # fmt: skip
    subprocess.run(
        [
            sys.executable, "-c",
            hide + f"import persist; persist.open('{tmp_path}/s.db', 'pw', freshness=False,"
            " kdf=persist.ebs.KdfParams.weak_for_tests(), allow_weak_kdf=True).close()",
        ],
        check=True,
        timeout=120,
    )  # fmt: skip


# -- dump ----------------------------------------------------------------------------


@persist.record(name="tests.cli.Account")
@dataclasses.dataclass
class Account:
    owner: str
    history: list[int]


class Person(persist.Persistent):
    def __init__(self, name: str) -> None:
        self.name = name


def test_dump_shows_records_objects_and_every_value_as_strict_json(home: Path) -> None:
    values: dict[Any, Any] = {
        "account": Account("alice", [1, 2]),
        "person": Person("bob"),
        "nan": float("nan"),
        "inf": [float("inf"), float("-inf"), 1.5],
        "bytes": b"\x00\xff",
        "tuple": (1, "a"),
        "set": {3, 1},
        "frozen": frozenset({"x"}),
        "map": {1: "one", "$x": 2},
        "dict": {"a": {"b": None}},
    }
    with persist.open(
        str(home / "s.db"), "the passphrase", allow_weak_kdf=True, freshness=False
    ) as db:
        t = db.table("accounts")
        t.update(values)
        t[("k", 1)] = True
    out = run("dump", str(home / "s.db"), "accounts", *opts(home))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(values) + 1
    rows = {json.dumps(r["key"]): r["value"] for r in map(_strict_json, lines)}
    assert rows['"account"'] == {
        "$record": "tests.cli.Account",
        "fields": {"owner": "alice", "history": [1, 2]},
    }
    assert rows['"person"']["$object"] >= 1
    assert rows['"person"']["class"] == "tests.cli.test_usage:Person"
    assert rows['"nan"'] == {"$float": "NaN"}
    assert rows['"inf"'] == [{"$float": "Infinity"}, {"$float": "-Infinity"}, 1.5]
    assert rows['"bytes"'] == {"$bytes": "AP8="}
    assert rows['"tuple"'] == {"$tuple": [1, "a"]}
    assert rows['"set"'] == {"$set": [1, 3]}
    assert rows['"frozen"'] == {"$frozenset": ["x"]}
    assert rows['"map"'] == {"$map": [[1, "one"], ["$x", 2]]}
    assert rows['"dict"'] == {"a": {"b": None}}
    assert rows['{"$tuple": ["k", 1]}'] is True


def test_dump_of_the_root_holding_objects_of_an_unimportable_class(home: Path) -> None:
    """The classes live in a script that dump cannot import: it decodes what it can."""
    script = f"""
import dataclasses, persist
@persist.record(name="script.Thing")
@dataclasses.dataclass
class Thing:
    items: list
class Node(persist.Persistent):
    pass
n = Node(); n.label = "x"
with persist.open({str(home / "s.db")!r}, "the passphrase", allow_weak_kdf=True,
                  freshness=False) as db:
    db.root["thing"] = Thing([1])
    db.root["node"] = n
    db.root["after"] = 1
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    out = run("dump", str(home / "s.db"), *opts(home))
    assert out.returncode == 0, out.stderr
    rows = [_strict_json(line) for line in out.stdout.splitlines()]
    assert rows == [
        {"key": "after", "value": 1},
        {"key": "node", "value": {"$object": 1, "class": "__main__:Node"}},
        {"key": "thing", "value": {"$record": "script.Thing", "fields": {"items": [1]}}},
    ]


def _strict_json(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_dump_shows_a_value_that_does_not_decode_and_exits_1(home: Path) -> None:
    """A value written by an older version (nested past the decoder's limit) is
    shown as undecodable; the entries after it are still printed."""
    from persist.db.keys import encode_key

    with persist.open(
        str(home / "s.db"), "the passphrase", allow_weak_kdf=True, freshness=False
    ) as db:
        t = db.table("t")
        db._access.put("t", encode_key("deep"), b"\x81" * 500 + b"\x00")  # [[[...0...]]]
        t["later"] = 2
    out = run("dump", str(home / "s.db"), "t", *opts(home))
    assert out.returncode == 1, out.stderr
    rows = [_strict_json(line) for line in out.stdout.splitlines()]
    assert [r["key"] for r in rows] == ["deep", "k", "later"]
    assert "$undecodable" in rows[0]["value"] and rows[2]["value"] == 2
