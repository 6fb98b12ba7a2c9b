"""Seeded generator of realistic card transactions for fraud detection: the suite's bundled default data.

Fraud is drawn first and the transaction is drawn given it, the way fraud looks in card data: larger
amounts, night hours, card-not-present channels, foreign merchants, new accounts, bursts of transactions far
from home. The classes overlap, so a good model is good but not perfect. Missing values appear where they do in
real feeds (age not on file, no geolocation, unknown device).

``drift`` (0..1) makes a later month, for monitoring demos and tests: amounts, transaction counts and the fraud
rate rise for everyone, a new fraud pattern appears (card testing: tiny amounts at gaming merchants), geolocation
goes missing more often, and a new customer segment joins, a share ``NEW_SEGMENT_SHARE * drift`` of the legitimate
transactions: younger people with accounts opened last year who shop online, in the evening, at other merchants
(not the brand-new accounts and merchants fraud favours, so that the classes stay as separable). The stronger
the drift, the more features move and the further, as a real shift spreads. On 50,000 rows a side, each feature
crosses Evidently's default threshold (Wasserstein 0.1, Jensen-Shannon 0.1) from about this drift on:

==================================================================  =====
feature                                                             drift
==================================================================  =====
transactions_last_24h                                               0.1
amount                                                              0.3
account_age_days, customer_age, channel, card_present, device_type  0.4
avg_amount_30d, hour_of_day                                         0.5
merchant_category                                                   0.8
distance_from_home_km                                               1.0
country                                                             never
==================================================================  =====

So with the ids, the timestamp and the label left out (12 features), ``drift=0.3`` drifts 2 features (no dataset
drift at Evidently's default share of 0.5), ``drift=0.4`` 7, ``drift=0.6`` 9 and ``drift=1`` 11
(``tests/components/test_monitor_readme.py`` holds ``drift=0.6`` and ``drift=0`` to it). ``drift=0`` gives the same
rows as before the drift option existed, so the bundled default data never changes.
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
# drift: the new customer segment's share of legitimate transactions at drift 1, and the share of its transactions
# that show each of its traits (traits drawn apart, so each feature moves at its own pace).
NEW_SEGMENT_SHARE = 0.5
SEGMENT_TRAITS = {"young": 0.6, "new_account": 0.5, "evening": 0.4, "merchants": 0.8, "online": 0.5}
# Restaurants, fashion and entertainment: the segment shops where fraud seldom does, so it moves the mix without
# looking like fraud.
SEGMENT_CATEGORY_P = np.array([0.10, 0.22, 0.02, 0.04, 0.06, 0.26, 0.24, 0.03, 0.02, 0.01, 0.0, 0.0])
AVG_AMOUNT_RISE = 0.15  # avg_amount_30d x (1 + this * drift): it lags the transaction amounts' own rise
DISTANCE_RISE = 0.2  # distance_from_home_km x (1 + this * drift)


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

    ``fraud_rate`` is the share of positives (kept within 1-5%); ``drift`` in [0, 1] makes a later month: more
    features shift, and further, as it grows (the module's docstring lists them).
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
    if drift > 0:
        # Its own random stream: the main one, hence drift=0's rows, stays as it was.
        _new_customer_segment(df, fraud, drift, np.random.default_rng([seed, 1]))
    # Missing values where real feeds have them.
    df.loc[rng.random(rows) < 0.03, "customer_age"] = np.nan
    df.loc[rng.random(rows) < 0.04 + 0.15 * drift, "distance_from_home_km"] = np.nan
    df.loc[rng.random(rows) < 0.02, "device_type"] = None
    # A little label noise: chargebacks are never perfectly recorded.
    flip = rng.random(rows) < 0.001
    df.loc[flip, TARGET] = 1 - df.loc[flip, TARGET]
    return df


def _new_customer_segment(df: pd.DataFrame, fraud: np.ndarray, drift: float, rng: np.random.Generator) -> None:
    """A later month's customers, in place (see the module's docstring): legitimate rows of the new segment get
    its traits; spending levels and distances rise for everyone."""
    rows = len(df)
    segment = ~fraud & (rng.random(rows) < NEW_SEGMENT_SHARE * drift)
    traits = {name: segment & (rng.random(rows) < share) for name, share in SEGMENT_TRAITS.items()}
    young, new_account, evening = traits["young"], traits["new_account"], traits["evening"]
    df.loc[young, "customer_age"] = np.clip(rng.normal(30, 7, int(young.sum())), 18, 95).round()
    df.loc[new_account, "account_age_days"] = rng.integers(365, 730, int(new_account.sum())).astype(np.float64)
    df.loc[evening, "hour_of_day"] = rng.integers(18, 23, int(evening.sum()))
    merchants, online = traits["merchants"], traits["online"]
    p = SEGMENT_CATEGORY_P / SEGMENT_CATEGORY_P.sum()
    df.loc[merchants, "merchant_category"] = rng.choice(MERCHANT_CATEGORIES, size=int(merchants.sum()), p=p)
    df.loc[online, "channel"] = "online"
    df.loc[online, "device_type"] = rng.choice(DEVICES[:3], size=int(online.sum()))
    df.loc[online, "card_present"] = 0
    df["avg_amount_30d"] = (df["avg_amount_30d"] * (1.0 + AVG_AMOUNT_RISE * drift)).round(2)
    df["distance_from_home_km"] = (df["distance_from_home_km"] * (1.0 + DISTANCE_RISE * drift)).round(1)


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
