"""Snapshot generations (features/generations.py): what a new generation carries over, the CURRENT pointer, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features import generations as g


def _write(folder: Path, name: str, marker: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [marker]}).to_parquet(folder / name, index=False)


def _marker(folder: Path, name: str) -> str:
    return pd.read_parquet(folder / name)["id"].iloc[0]


def test_without_current_the_flat_folder_is_served_and_carried_into_the_first_generation(tmp_path):
    snaps = tmp_path / "snapshots"
    _write(snaps, "accounts.parquet", "flat-accounts")
    _write(snaps, "merchants.parquet", "flat-merchants")
    assert g.current_id(snaps) is None and g.served_dir(snaps) == snaps and g.current_manifest(snaps) == {}

    vdir = g.version_dir(snaps, "merchant_risk", 4)
    _write(vdir, "merchants.parquet", "v4-merchants")
    gen = g.record_version(snaps, "merchant_risk", 4, True, vdir, "2024-08-27", "/data/x")
    served = g.served_dir(snaps)
    assert served == g.generation_dir(snaps, gen) and (snaps / "CURRENT").read_text().strip() == gen
    assert _marker(served, "merchants.parquet") == "v4-merchants"
    assert _marker(served, "accounts.parquet") == "flat-accounts"  # the flat file is kept, version unknown
    manifest = g.current_manifest(snaps)
    assert manifest["models"]["merchant_risk"]["version"] == 4
    assert manifest["models"]["serial_returners"]["version"] is None
    assert json.loads((vdir / "meta.json").read_text())["as_of"] == "2024-08-27"


def test_a_refused_version_changes_nothing_and_a_promotion_replaces_only_its_model(tmp_path):
    snaps = tmp_path / "snapshots"
    v1 = g.version_dir(snaps, "serial_returners", 1)
    _write(v1, "accounts.parquet", "v1")
    _write(v1, "account_queue.parquet", "q1")
    t1 = g.version_dir(snaps, "ticket_triage", 1)
    for f in g.FILES_BY_MODEL["ticket_triage"]:
        _write(t1, f, "t1")
    first = g.record_version(snaps, "serial_returners", 1, True, v1, "d1", "src")
    second = g.record_version(snaps, "ticket_triage", 1, True, t1, "d1", "src")
    v2 = g.version_dir(snaps, "serial_returners", 2)
    _write(v2, "accounts.parquet", "v2")
    _write(v2, "account_queue.parquet", "q2")
    assert g.record_version(snaps, "serial_returners", 2, False, v2, "d2", "src") is None
    assert g.current_id(snaps) == second and _marker(g.served_dir(snaps), "accounts.parquet") == "v1"

    third = g.record_version(snaps, "serial_returners", 2, True, v2, "d2", "src")
    served = g.served_dir(snaps)
    assert _marker(served, "accounts.parquet") == "v2" and _marker(served, "account_queue.parquet") == "q2"
    assert _marker(served, "ticket_triage_orders.parquet") == "t1"  # the other model's files carried over
    manifest = g.current_manifest(snaps)
    assert manifest["previous"] == second and manifest["models"]["ticket_triage"]["files"][
        "ticket_triage_orders.parquet"] == str(t1 / "ticket_triage_orders.parquet")
    assert {n: e["version"] for n, e in manifest["models"].items()} == {"serial_returners": 2, "ticket_triage": 1}
    # Older generations stay readable (a service still holding one loses nothing).
    assert _marker(g.generation_dir(snaps, first), "accounts.parquet") == "v1" and third != first


def test_activate_refuses_an_unknown_generation_and_prune_keeps_the_current(tmp_path):
    snaps = tmp_path / "snapshots"
    with pytest.raises(g.GenerationError, match="no such generation"):
        g.activate(snaps, "nope")
    made = [g.publish(snaps, {"return_volume": {"version": i, "dir": None}}, f"v{i}") for i in range(1, 5)]
    g.activate(snaps, made[0])  # an operator rolls back to the oldest
    gone = g.prune(snaps, keep=2)
    assert made[0] not in gone and set(gone) == {made[1]}
    assert g.current_manifest(snaps)["models"]["return_volume"]["version"] == 1
