"""Seeded generator of realistic card transactions for fraud detection: the suite's bundled default data.

Fraud is drawn first and the transaction is drawn given it, the way fraud looks in card data: larger
amounts, night hours, card-not-present channels, foreign merchants, new accounts, bursts of transactions far
from home. The classes overlap, so a good model is good but not perfect. Missing values appear where they do in
real feeds (age not on file, no geolocation, unknown device). ``drift`` shifts the distributions the way a
changed customer base or a new fraud pattern would, for monitoring demos and tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_ROWS = 100_000
DEFAULT_SEED = 7
TARGET = "is_fraud"
ID_COLUMNS = ("transaction_id", "customer_id")
TIME_COLUMN = "event_time"

MERCHANT_CATEGORIES = np.array(
    [
        "grocery",
        "restaurants",
        "fuel",
        "travel",
        "electronics",
        "fashion",
        "entertainment",
        "health",
        "utilities",
        "gaming",
        "jewelry",
        "money_transfer",
    ]
)
# Probability of each merchant category for legitimate and fraudulent transactions.
LEGIT_CATEGORY_P = np.array([0.24, 0.16, 0.12, 0.05, 0.06, 0.09, 0.07, 0.08, 0.08, 0.02, 0.01, 0.02])
FRAUD_CATEGORY_P = np.array([0.04, 0.03, 0.04, 0.12, 0.22, 0.08, 0.05, 0.02, 0.01, 0.14, 0.13, 0.12])
CHANNELS = np.array(["chip", "contactless", "online", "atm"])
LEGIT_CHANNEL_P = np.array([0.40, 0.33, 0.22, 0.05])
FRAUD_CHANNEL_P = np.array([0.08, 0.07, 0.75, 0.10])
DEVICES = np.array(["ios", "android", "web", "pos_terminal"])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "CA", "MX", "BR", "NG", "RU", "CN"])
LEGIT_COUNTRY_P = np.array([0.82, 0.04, 0.03, 0.03, 0.04, 0.02, 0.01, 0.003, 0.003, 0.004])
FRAUD_COUNTRY_P = np.array([0.35, 0.05, 0.04, 0.04, 0.03, 0.08, 0.10, 0.12, 0.10, 0.09])


def _choice(
    rng: np.random.Generator, values: np.ndarray, p_legit: np.ndarray, p_fraud: np.ndarray, fraud: np.ndarray
) -> np.ndarray:
    out = rng.choice(values, size=fraud.size, p=p_legit / p_legit.sum())
    n_fraud = int(fraud.sum())
    out[fraud] = rng.choice(values, size=n_fraud, p=p_fraud / p_fraud.sum())
    return out


def generate_transactions(
    rows: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    fraud_rate: float = 0.025,
    drift: float = 0.0,
    start: str = "2026-01-01",
) -> pd.DataFrame:
    """Return ``rows`` card transactions with an ``is_fraud`` label (0/1).

    ``fraud_rate`` is the share of positives (kept within 1-5%); ``drift`` in [0, 1] moves amounts up, the
    channel mix online, raises missing geolocation and adds a new fraud pattern, as a later month would.
    """
    if rows < 10:
        raise ValueError(f"rows must be at least 10, got {rows}")
    if not 0.01 <= fraud_rate <= 0.05:
        raise ValueError(f"fraud_rate must be between 0.01 and 0.05, got {fraud_rate}")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0 and 1, got {drift}")
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < fraud_rate * (1.0 + 0.4 * drift)

    # Timestamps over 90 days, in order; fraud clusters at night.
    seconds = np.sort(rng.uniform(0, 90 * 86400, rows))
    base_time = pd.Timestamp(start, tz="UTC")
    event_time = base_time + pd.to_timedelta(seconds.round(), unit="s")
    hour = ((seconds % 86400) // 3600).astype(np.int64)
    night_hours = rng.choice(np.array([0, 1, 2, 3, 4, 23]), size=rows)
    hour = np.where(fraud & (rng.random(rows) < 0.45), night_hours, hour)

    customers = rng.integers(100_000, 100_000 + max(rows // 8, 50), size=rows)
    account_age_days = np.where(
        fraud & (rng.random(rows) < 0.4), rng.integers(0, 60, rows), rng.integers(30, 4000, rows)
    ).astype(np.float64)
    customer_age = np.clip(rng.normal(44, 14, rows), 18, 95).round()
    customer_age = np.where(fraud, np.clip(rng.normal(36, 15, rows), 18, 95).round(), customer_age)

    avg_amount_30d = np.exp(rng.normal(3.7, 0.6, rows)).round(2)
    ratio = np.exp(rng.normal(0.0, 0.45, rows))
    fraud_ratio = np.exp(rng.normal(1.25, 0.85, rows))
    ratio = np.where(fraud, fraud_ratio, ratio)
    amount = (avg_amount_30d * ratio * (1.0 + 0.5 * drift)).round(2)

    txn_24h = rng.poisson(2.0 + 1.5 * drift, rows)
    txn_24h = np.where(fraud & (rng.random(rows) < 0.6), rng.poisson(6.0, rows), txn_24h)
    distance = np.exp(rng.normal(2.0, 1.0, rows))
    distance = np.where(fraud & (rng.random(rows) < 0.5), np.exp(rng.normal(4.5, 1.3, rows)), distance)

    category = _choice(rng, MERCHANT_CATEGORIES, LEGIT_CATEGORY_P, FRAUD_CATEGORY_P, fraud)
    channel_p = LEGIT_CHANNEL_P + drift * np.array([-0.15, 0.0, 0.2, -0.05])
    channel = _choice(rng, CHANNELS, channel_p.clip(0.01), FRAUD_CHANNEL_P, fraud)
    country = _choice(rng, COUNTRIES, LEGIT_COUNTRY_P, FRAUD_COUNTRY_P, fraud)
    device = np.where(
        channel == "online", rng.choice(DEVICES[:3], size=rows), np.where(channel == "atm", "atm", "pos_terminal")
    ).astype(object)
    card_present = np.isin(channel, ["chip", "contactless", "atm"]).astype(np.int64)
    if drift > 0:
        # A new fraud pattern: small card-testing amounts at gaming merchants.
        testing = fraud & (rng.random(rows) < 0.5 * drift)
        amount = np.where(testing, rng.uniform(0.5, 3.0, rows).round(2), amount)
        category = np.where(testing, "gaming", category)

    df = pd.DataFrame(
        {
            "transaction_id": [f"tx-{seed:04d}-{i:08d}" for i in range(rows)],
            "event_time": event_time,
            "customer_id": customers.astype(np.int64),
            "amount": amount,
            "avg_amount_30d": avg_amount_30d,
            "transactions_last_24h": txn_24h.astype(np.int64),
            "hour_of_day": hour,
            "distance_from_home_km": distance.round(1),
            "account_age_days": account_age_days,
            "customer_age": customer_age,
            "card_present": card_present,
            "merchant_category": category.astype(object),
            "channel": channel.astype(object),
            "country": country.astype(object),
            "device_type": device,
            TARGET: fraud.astype(np.int64),
        }
    )
    # Missing values where real feeds have them.
    df.loc[rng.random(rows) < 0.03, "customer_age"] = np.nan
    df.loc[rng.random(rows) < 0.04 + 0.15 * drift, "distance_from_home_km"] = np.nan
    df.loc[rng.random(rows) < 0.02, "device_type"] = None
    # A little label noise: chargebacks are never perfectly recorded.
    flip = rng.random(rows) < 0.001
    df.loc[flip, TARGET] = 1 - df.loc[flip, TARGET]
    return df


def write_transactions(
    path: str | Path, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, drift: float = 0.0
) -> Path:
    """Generate transactions and write them as Parquet or CSV (by the file's suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = generate_transactions(rows=rows, seed=seed, drift=drift)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def default_data_path(workspace: str | Path, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> Path:
    """The default dataset for a workspace, generated once and reused."""
    path = Path(workspace) / "data" / f"transactions-{rows}-seed{seed}.parquet"
    if not path.exists():
        write_transactions(path, rows=rows, seed=seed)
    return path
