"""The soak's timeline (per second: delivery lag, errors; faults as spans) and its chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.chaos import FaultRecord
from bench.soak_clients import ErrorLog, StreamClient, Writer


def delivery_lags(
    clients: list[StreamClient], writer: Writer, t0: float
) -> tuple[np.ndarray, np.ndarray]:
    """(arrival second since t0, lag in seconds) for every delivery of an acknowledged post.

    Lag is from the post's send time to the frame's arrival, on one clock; replays after a
    reconnect count with their full lag (that is what a reader waited).
    """
    sent = writer.posts.acknowledged()
    arrivals: list[float] = []
    lags: list[float] = []
    for client in clients:
        for item_id, at in zip(client.ids, client.times, strict=True):
            s = sent.get(item_id)
            if s is not None:
                arrivals.append(at - t0)
                lags.append(at - s)
    return np.asarray(arrivals), np.asarray(lags)


def timeline(
    clients: list[StreamClient],
    writer: Writer,
    errors: ErrorLog,
    faults: list[FaultRecord],
    t0: float,
    seconds: int,
) -> dict[str, Any]:
    arrivals, lags = delivery_lags(clients, writer, t0)
    per_second: list[dict[str, Any]] = []
    bucket = np.floor(arrivals).astype(int) if len(arrivals) else np.zeros(0, dtype=int)
    errors_at: dict[int, dict[str, int]] = {}
    for at, kind in zip(errors.times, errors.kinds, strict=True):
        errs_then = errors_at.setdefault(int(at - t0), {})
        errs_then[kind] = errs_then.get(kind, 0) + 1
    for second in range(seconds):
        chosen = lags[bucket == second]
        errs = errors_at.get(second, {})
        per_second.append(
            {
                "t": second,
                "deliveries": len(chosen),
                "lag_p50_ms": round(float(np.percentile(chosen, 50)) * 1000, 1)
                if len(chosen)
                else None,
                "lag_p99_ms": round(float(np.percentile(chosen, 99)) * 1000, 1)
                if len(chosen)
                else None,
                "errors": sum(errs.values()),
                "errors_by_kind": errs,
            }
        )
    overall = {
        "deliveries": len(lags),
        "lag_p50_ms": round(float(np.percentile(lags, 50)) * 1000, 1) if len(lags) else None,
        "lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000, 1) if len(lags) else None,
        "lag_max_ms": round(float(lags.max()) * 1000, 1) if len(lags) else None,
    }
    return {
        "faults": [
            {
                "kind": f.kind,
                "start_s": round(f.start - t0, 2),
                "undone_s": round(f.undone - t0, 2),
                "end_s": round(f.end - t0, 2),
                "recovered_after_s": f.recovered_after,
                "detail": f.detail,
                "error": f.error,
            }
            for f in faults
        ],
        "per_second": per_second,
        "delivery": overall,
    }


def chart(result: dict[str, Any], path: Path) -> Path:
    """Faults as shaded spans; delivery lag p50/p99 (log scale) above, errors per second below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["timeline"]["per_second"]
    t = [r["t"] for r in rows]
    p50 = [r["lag_p50_ms"] if r["lag_p50_ms"] is not None else np.nan for r in rows]
    p99 = [r["lag_p99_ms"] if r["lag_p99_ms"] is not None else np.nan for r in rows]
    errs = [r["errors"] for r in rows]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    colors = plt.get_cmap("tab10")
    kinds = sorted({f["kind"] for f in result["timeline"]["faults"]})
    for fault in result["timeline"]["faults"]:
        color = colors(kinds.index(fault["kind"]) % 10)
        cause_end = max(fault["undone_s"], fault["start_s"] + 0.5)
        for ax in (top, bottom):  # darker while the cause lasts, lighter until healthy again
            ax.axvspan(fault["start_s"], cause_end, color=color, alpha=0.35, lw=0)
            ax.axvspan(cause_end, max(fault["end_s"], cause_end), color=color, alpha=0.12, lw=0)
        top.text(fault["start_s"], 1.0, fault["kind"].replace("_", " "), rotation=90,
                 va="top", ha="right", fontsize=7, transform=top.get_xaxis_transform())  # fmt: skip
    top.plot(t, p50, lw=1.2, label="delivery lag p50")
    top.plot(t, p99, lw=1.2, label="delivery lag p99")
    top.set_yscale("log")
    top.set_ylabel("ms (post sent to frame received)")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3, which="both")
    bottom.bar(t, errs, width=1.0, color="tab:red")
    bottom.set_ylabel("errors / s")
    bottom.set_xlabel("seconds into the soak")
    bottom.grid(alpha=0.3)
    c = result["checker"]
    fig.suptitle(
        f"Chaos soak: {c['clients']} streams, {c['posts']['acknowledged']} posts, "
        f"{len(result['timeline']['faults'])} faults; missing {c['missing']}, "
        f"duplicates {c['duplicates']}, lost writes {len(c['posts']['lost'])}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
