"""The account page's evidence: the data folder's orders, returns, links and tickets, indexed once per worker
(serving/ui.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd

from serving.app import ApiError, Runtime
from serving.ui_common import HISTORY_WEEKS

# --------------------------------------------------------------------------------------------------------------------
# The data folder's evidence: orders, returns, links and tickets, indexed once per worker


class Evidence:
    """The contract tables behind the pages' evidence, read from the data folder once and indexed by ID."""

    def __init__(self, data_dir: Path):
        from features.contract import load_dataset

        ds = load_dataset(data_dir, tables=["orders", "returns", "tickets", "account_links"])
        self.orders, self.returns, self.tickets = ds.orders, ds.returns, ds.tickets
        self.links = ds.tables.get("account_links", pd.DataFrame(columns=["account_id", "link_type", "link_value"]))
        self.end = max(self.orders["ordered_at"].max(), self.returns["requested_at"].max()) \
            if len(self.orders) else pd.Timestamp.now(tz="UTC")
        self._orders_by = self.orders.groupby("account_id", observed=True).indices
        self._returns_by = self.returns.groupby("account_id", observed=True).indices
        links = self.links.dropna(subset=["account_id", "link_value"])
        self._links_by = links.groupby("account_id", observed=True).indices
        self._holders = links.groupby(["link_type", "link_value"], observed=True)["account_id"].agg(
            lambda s: sorted(set(s.astype(str))))
        self.links = links
        self._merchant_history: dict[str, dict] | None = None

    def account_orders(self, account_id: str) -> pd.DataFrame:
        idx = self._orders_by.get(account_id)
        return self.orders.iloc[idx].sort_values("ordered_at") if idx is not None else self.orders.iloc[:0]

    def account_returns(self, account_id: str) -> pd.DataFrame:
        idx = self._returns_by.get(account_id)
        return self.returns.iloc[idx].sort_values("requested_at") if idx is not None else self.returns.iloc[:0]

    def linked(self, account_id: str, max_share: int) -> dict[str, list[str]]:
        """Accounts sharing an identifier with ``account_id`` -> the link types they share (identifiers held by
        more than ``max_share`` accounts are hubs, e.g. a warehouse address, and link nobody, as in training)."""
        idx = self._links_by.get(account_id)
        out: dict[str, set[str]] = {}
        if idx is None:
            return {}
        for lt, lv in self.links.iloc[idx][["link_type", "link_value"]].itertuples(index=False):
            holders = self._holders.get((lt, lv), [])
            if len(holders) > max_share:
                continue
            for other in holders:
                if other != account_id:
                    out.setdefault(other, set()).add(str(lt))
        return {k: sorted(v) for k, v in sorted(out.items())}

    def ring(self, account_id: str, max_share: int, limit: int = 200) -> list[str]:
        """The account's linked group: every account reachable through shared identifiers (breadth first)."""
        seen, frontier = {account_id}, [account_id]
        while frontier and len(seen) < limit:
            nxt = []
            for a in frontier:
                for other in self.linked(a, max_share):
                    if other not in seen:
                        seen.add(other)
                        nxt.append(other)
            frontier = nxt
        return sorted(seen)

    def merchant_history(self) -> dict[str, dict]:
        """Per merchant, the last :data:`HISTORY_WEEKS` weeks: complaint tickets and late deliveries per week."""
        if self._merchant_history is not None:
            return self._merchant_history
        end = self.end.tz_convert("UTC").normalize() if self.end.tzinfo else self.end.normalize()
        start = end - pd.Timedelta(weeks=HISTORY_WEEKS)

        def weekly(frame: pd.DataFrame, when: str) -> pd.DataFrame:
            f = frame[(frame[when] > start) & (frame[when] <= end + pd.Timedelta(days=1))]
            week = ((f[when] - start).dt.days // 7).clip(0, HISTORY_WEEKS - 1)
            return f.assign(week=week.to_numpy())

        t = self.tickets
        complaints = weekly(t[t["case_type"] == "complaint"], "created_at") if len(t) else t.assign(week=[])
        o = weekly(self.orders.dropna(subset=["delivered_at"]), "delivered_at")
        late = o["delivered_at"] > o["promised_delivery_at"]
        out: dict[str, dict] = {}
        c_counts = complaints.groupby(["merchant_id", "week"], observed=True).size()
        d_counts = o.groupby(["merchant_id", "week"], observed=True).size()
        l_counts = o[late.to_numpy()].groupby(["merchant_id", "week"], observed=True).size()
        for m in set(o["merchant_id"].astype(str)) | set(complaints["merchant_id"].dropna().astype(str)):
            c = [int(c_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            n = [int(d_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            lt = [int(l_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            out[m] = {"complaints": c, "delivered": n, "late": lt,
                      "late_share": [x / y if y else 0.0 for x, y in zip(lt, n, strict=True)]}
        self._merchant_history = out
        return out


_evidence: dict[str, Evidence] = {}
_evidence_lock = threading.Lock()


def evidence_for(rt: Runtime) -> Evidence:
    """The data folder's evidence (read on first use, then kept per worker)."""
    from features.contract import ContractError

    key = str(rt.settings.data_dir)
    with _evidence_lock:
        if key not in _evidence:
            if not rt.settings.data_dir.is_dir():
                raise ApiError(503, f"evidence needs the data folder {key} (AFTERSALES_DATA_DIR), which does not "
                                    "exist on this server")
            try:
                _evidence[key] = Evidence(rt.settings.data_dir)
            except ContractError as e:
                raise ApiError(503, f"evidence needs a readable data folder: {e}") from None
        return _evidence[key]
