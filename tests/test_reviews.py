"""The review decision store: validation, idempotency, concurrent writers, imports, labels."""

from __future__ import annotations

import multiprocessing as mp

import pandas as pd
import pytest

from features.reviews import (
    DecisionError,
    content_key,
    decision_labels,
    import_decisions,
    list_decisions,
    record_decision,
)
from features.settings import Settings

KNOWN = {f"A{i:03d}" for i in range(50)}


@pytest.fixture()
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'reviews.db'}"


def test_record_and_list_round_trip(url):
    rec = record_decision("A001", "confirmed_abuse", "li.wei", "14 returns in a month", known_accounts=KNOWN,
                          decided_at="2024-03-01T10:00:00", url=url)
    assert rec["duplicate"] is False and rec["decided_at"] == pd.Timestamp("2024-03-01T10:00:00", tz="UTC")
    record_decision("A002", "cleared", "j.smith", known_accounts=KNOWN, url=url)
    frame = list_decisions(url=url)
    assert frame["account_id"].tolist() == ["A001", "A002"]
    assert frame.loc[0, "note"] == "14 returns in a month" and pd.isna(frame.loc[1, "note"])
    assert str(frame["decided_at"].dtype) == "datetime64[us, UTC]"
    assert list_decisions(url=url, account_id="A002")["decision"].tolist() == ["cleared"]
    assert len(list_decisions(url=url, since="2025-01-01")) == 1  # A002 was decided now


@pytest.mark.parametrize("kwargs, message", [
    ({"account_id": "NOPE"}, "unknown account 'NOPE'"),
    ({"decision": "maybe"}, "unknown decision 'maybe': use one of confirmed_abuse, cleared"),
    ({"reviewer": " "}, "reviewer is empty"),
    ({"decided_at": "2999-01-01"}, "lies in the future"),
])
def test_bad_decisions_are_refused_and_not_stored(url, kwargs, message):
    args = {"account_id": "A001", "decision": "cleared", "reviewer": "li.wei", **kwargs}
    with pytest.raises(DecisionError, match=message):
        record_decision(args.pop("account_id"), args.pop("decision"), args.pop("reviewer"), known_accounts=KNOWN,
                        url=url, **args)
    assert list_decisions(url=url).empty


def test_without_an_account_list_or_snapshot_the_account_cannot_be_checked(tmp_path):
    settings = Settings(models_dir=tmp_path / "models")
    with pytest.raises(DecisionError, match="cannot check the account"):
        record_decision("A001", "cleared", "li.wei", settings=settings)
    # Once training wrote the account snapshot, it is the list of known accounts.
    settings.snapshots_dir.mkdir(parents=True)
    pd.DataFrame({"account_id": ["A001"]}).to_parquet(settings.snapshots_dir / "accounts.parquet")
    assert record_decision("A001", "cleared", "li.wei", settings=settings)["account_id"] == "A001"
    with pytest.raises(DecisionError, match="unknown account"):
        record_decision("A002", "cleared", "li.wei", settings=settings)


def test_idempotency_key(url):
    first = record_decision("A003", "cleared", "li.wei", decision_id="k-1", known_accounts=KNOWN, url=url)
    again = record_decision("A003", "cleared", "li.wei", decision_id="k-1", known_accounts=KNOWN, url=url)
    assert not first["duplicate"] and again["duplicate"]
    assert len(list_decisions(url=url)) == 1
    with pytest.raises(DecisionError, match="already used for another decision"):
        record_decision("A004", "confirmed_abuse", "li.wei", decision_id="k-1", known_accounts=KNOWN, url=url)


def _writer(url: str, worker: int, n: int) -> None:
    for i in range(n):
        key = f"w{worker}-{i}"
        account = f"A{(worker * 7 + i) % 50:03d}"
        decision = "cleared" if i % 2 else "confirmed_abuse"
        record_decision(account, decision, f"reviewer-{worker}", decision_id=key, known_accounts=KNOWN, url=url)
        if i % 4 == 0:  # a client retry after a timeout: the same key again
            record_decision(account, decision, f"reviewer-{worker}", decision_id=key, known_accounts=KNOWN, url=url)


def test_eight_concurrent_writers_lose_and_double_nothing(url):
    workers, per_worker = 8, 12
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(url, w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    frame = list_decisions(url=url)
    expected = {f"w{w}-{i}" for w in range(workers) for i in range(per_worker)}
    assert len(frame) == workers * per_worker  # nothing doubled by the retries
    assert set(frame["decision_id"]) == expected  # nothing lost


def test_import_is_keyed_by_content_and_refuses_unknown_accounts(url):
    table = pd.DataFrame({
        "account_id": ["A010", "A011", "ZZZ"], "decision": ["confirmed_abuse", "cleared", "cleared"],
        "decided_at": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04"], utc=True),
        "reviewer": ["li.wei", "m.chen", "m.chen"], "note": [None, "bracketer", None]})
    res = import_decisions(table, known_accounts=KNOWN, url=url)
    assert (res["stored"], res["already_present"], res["refused"]) == (2, 0, 1)
    assert "unknown account 'ZZZ'" in res["refusals"][0]
    res = import_decisions(table, known_accounts=KNOWN, url=url)
    assert (res["stored"], res["already_present"]) == (0, 2)
    stored = list_decisions(url=url)
    assert len(stored) == 2 and stored["source"].eq("import").all()
    assert stored.loc[0, "decision_id"] == content_key("A010", "confirmed_abuse", "2024-01-02", "li.wei")


def test_labels_latest_decision_wins_and_respect_as_of():
    d = pd.DataFrame({
        "account_id": ["A1", "A1", "A2", "A3", "A3"],
        "decision": ["cleared", "confirmed_abuse", "cleared", "confirmed_abuse", "confirmed_abuse"],
        "decided_at": pd.to_datetime(["2024-01-01", "2024-03-01", "2024-02-01", "2024-02-15", "2024-02-15"], utc=True),
        "reviewer": ["a", "b", "a", "c", "c"]})  # A3's decision appears twice (imported and in the data folder)
    lab = decision_labels(d)
    assert lab.set_index("account_id")["label"].to_dict() == {"A2": 0.0, "A3": 1.0, "A1": 1.0}
    assert lab["decided_at"].is_monotonic_increasing
    early = decision_labels(d, as_of="2024-02-01")
    assert early.set_index("account_id")["label"].to_dict() == {"A1": 0.0, "A2": 0.0}
