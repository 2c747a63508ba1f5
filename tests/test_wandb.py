"""wandb, offline: what a sweep's runs record, read back from their .wandb files."""

import json
import struct
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from tests.conftest import TINY, sweep


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a .wandb file: a ':W&B' header, then LevelDB log blocks of 32 KiB whose
    chunks (full, or first/middle/last) reassemble into protobuf records."""
    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_sweep_runs_share_a_group_are_named_by_their_overrides_and_finish(
    tmp_path: Path, shakespeare: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir, "model.n_head=2,4", *TINY[2:])
    assert proc.returncode == 0, proc.stderr

    run_ids = set()
    for job, n_head in (("0", 2), ("1", 4)):
        (wandb_file,) = (sweep_dir / job / "wandb").glob("offline-run-*/run-*.wandb")
        records = wandb_records(wandb_file)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        overrides = [f"model.n_head={n_head}", *TINY[2:], f"data.path={shakespeare}"]
        assert run.run_group == str(sweep_dir)
        assert run.display_name == " ".join(overrides)
        assert list(run.tags) == [o[:64] for o in overrides]
        run_ids.add(run.run_id)
        config = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "config"
            for item in r.config.update
        }
        assert config["model"]["n_head"] == n_head  # the resolved run config
        assert config["run_dir"] == str(sweep_dir / job)

        # this run's own metrics only: two validations (steps 15 and 30), then its exit record
        history = [
            {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        assert [h["trainer/global_step"] for h in history if "val_loss" in h] == [14, 29]
        assert any(r.WhichOneof("record_type") == "exit" for r in records)
    assert len(run_ids) == 2
