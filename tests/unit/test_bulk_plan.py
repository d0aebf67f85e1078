"""``rayfleet translate-file`` without a cluster: how the input is cut into parts and chunks,
the fleet's shared-storage rule, and the help text (the runs are in
tests/integration/test_translate_file.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import rayfleet_cli

pytestmark = pytest.mark.unit


def test_fleet_files_must_be_on_shared_storage(tmp_path, tiny_model):
    from rayfleet.bulk.launch import prepare
    from rayfleet.bulk.plan import BulkError

    with pytest.raises(BulkError, match="translate-file on fleet 'lab' needs shared storage"):
        prepare(Path("/data/in.jsonl"), Path("/data/out.jsonl"), model=str(tiny_model), fleet_name="lab")
    with pytest.raises(BulkError) as e:
        prepare(Path("/data/in.jsonl"), Path("/mnt/shared/out.jsonl"), model=str(tiny_model), fleet_name="lab",
                fleet_storage="/mnt/shared")
    assert e.value.message.startswith("/data/in.jsonl is not under the fleet's storage.path /mnt/shared;")
    assert e.value.hint.startswith("Copy the input to /mnt/shared/")


@pytest.mark.parametrize("part_size,batch_size,max_chunks", [(100, 7, 2048), (1000, 32, 3), (7, 300, 50),
                                                             (250, 64, 2048)])
def test_chunks_cover_every_line_once(tmp_path, part_size, batch_size, max_chunks):
    """The byte ranges the actors read: every line once, in order, no chunk across two parts."""
    from rayfleet.bulk.plan import num_parts, plan_chunks, scan_input

    lines = [json.dumps({"id": i, "text": "é" * (i % 5)}) for i in range(2037)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")  # the last line without its newline
    data = path.read_bytes()
    scan = scan_input(path, part_size=part_size, batch_size=batch_size)
    assert (scan.lines, scan.size) == (2037, len(data))
    chunks = plan_chunks(scan, part_size=part_size, batch_size=batch_size,
                         parts=range(num_parts(scan, part_size)), max_chunks=max_chunks)
    got: list[str] = []
    for c in chunks:
        assert c.first == len(got) and c.first // part_size == c.part == (c.first + c.count - 1) // part_size
        seg = data[c.start:c.end].decode().split("\n")
        got += seg[:-1] if seg[-1] == "" else seg
    assert got == lines


def test_help_explains():
    r = rayfleet_cli("translate-file", "--help")
    assert r.returncode == 0, r.stderr
    assert "Example: rayfleet translate-file in.jsonl out.jsonl" in r.stdout
    for option in ("--field", "--output-field", "--model", "--backend", "--part-size", "--restart"):
        assert option in r.stdout
