"""Issue 17: ``persist load`` (CSV / JSON Lines, parallel producers, atomic blocks)
and ``persist export`` (JSON Lines), in process through ``persist.cli.main``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import persist
from persist.cli import main
from persist.ebs import KdfParams

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    (tmp_path / "pw").write_text("the passphrase\n")
    with persist.open(str(tmp_path / "s.db"), "the passphrase", **WEAK):  # type: ignore[arg-type]
        pass
    return tmp_path


def cli(store: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = [*args, "--passphrase-file", str(store / "pw"), "--no-freshness", "--allow-weak-kdf"]
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def table(store: Path, name: str) -> dict[object, object]:
    with persist.open(str(store / "s.db"), "the passphrase", read_only=True, **WEAK) as db:  # type: ignore[arg-type]
        return dict(db.table(name).items())


def write_csv(path: Path, rows: range, header: str = "id,name,n") -> None:
    lines = [header] + [f"k{i:05d},name {i},{i}" for i in rows]
    path.write_text("\n".join(lines) + "\n")


def test_load_four_csv_files_in_parallel_blocks(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for f in range(4):
        path = store / f"part{f}.csv"
        write_csv(path, range(f * 250, (f + 1) * 250))
        files.append(str(path))
    code, out, err = cli(
        store, "load", str(store / "s.db"), "people", *files,
        "--key", "id", "--value", "name", "--block-size", "64", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "loaded 1,000 rows into people" in out
    got = table(store, "people")
    assert len(got) == 1000 and got["k00007"] == "name 7" and got["k00999"] == "name 999"
    # several value columns make a map; none make a map of all the others
    code, _, err = cli(
        store, "load", str(store / "s.db"), "maps", files[0], "--key", "id", capsys=capsys
    )
    assert code == 0, err
    assert table(store, "maps")["k00003"] == {"name": "name 3", "n": "3"}


def test_json_lines_from_stdin_keep_their_types(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [json.dumps({"k": i, "v": {"x": [i, "y"], "ok": True}}) for i in range(50)]
    stdin = io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = cli(
        store, "load", str(store / "s.db"), "j", "-", "--format", "jsonl",
        "--key", "k", "--value", "v", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "loaded 50 rows" in out
    assert table(store, "j")[7] == {"x": [7, "y"], "ok": True}


def test_a_wrong_column_is_refused_before_anything_is_written(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(store / "a.csv", range(10))
    write_csv(store / "b.csv", range(10, 20), header="ident,name,n")
    code, _, err = cli(
        store, "load", str(store / "s.db"), "t", str(store / "a.csv"), str(store / "b.csv"),
        "--key", "id", "--value", "name", capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert "b.csv: no column 'id'" in err and "ident, name, n" in err
    assert "Traceback" not in err
    assert table(store, "t") == {}


def test_a_bad_row_stops_the_load_and_names_its_line(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = store / "bad.jsonl"
    good = [json.dumps({"k": f"a{i}", "v": i}) for i in range(30)]
    path.write_text("\n".join([*good, "{not json", *good]) + "\n")
    code, _, err = cli(
        store, "load", str(store / "s.db"), "t", str(path), "--key", "k", "--value", "v",
        "--block-size", "10", capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert "bad.jsonl:31: not JSON" in err and "30 rows loaded before" in err
    assert table(store, "t") == {f"a{i}": i for i in range(30)}  # whole blocks, kept
    code, _, err = cli(
        store, "load", str(store / "s.db"), "t", str(store / "missing.csv"), "--key", "k",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "no file" in err


def test_round_trip_load_export_load(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(store / "a.csv", range(300))
    code, _, err = cli(
        store, "load", str(store / "s.db"), "src", str(store / "a.csv"), "--key", "id",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    code, exported, err = cli(store, "export", str(store / "s.db"), "src", capsys=capsys)
    assert code == 0, err
    lines = exported.splitlines()
    assert len(lines) == 300 and json.loads(lines[0])["key"] == "k00000"
    (store / "src.jsonl").write_text(exported)
    code, _, err = cli(
        store, "load", str(store / "s.db"), "copy", str(store / "src.jsonl"),
        "--key", "key", "--value", "value", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert table(store, "copy") == table(store, "src")
    code, again, _ = cli(store, "export", str(store / "s.db"), "copy", capsys=capsys)
    assert again == exported
    code, _, err = cli(store, "export", str(store / "s.db"), "nope", capsys=capsys)
    assert code == 2 and "no table named 'nope'" in err
