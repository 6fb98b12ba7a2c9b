"""The payload log's privacy controls: fields dropped or hashed before a record is written, and how long files stay.

Both run in the payload logger's writer thread (``payload_log.py``), never on the request path.

- ``FieldPolicy``: ``drop`` removes fields from every record; ``hash`` replaces a field's value with the HMAC-SHA256
  of its text keyed by a secret salt (``records.pseudonymize``), so one customer id always becomes one hash and
  records still group and join by it, but nobody without the salt can recover the id by hashing guesses. The
  payload log's own fields (request id, timestamp, model, version, variant, format, prediction, probability) can be
  neither: outcomes, monitoring and A/B analysis read them.
- ``Retention``: whole ``date=`` partitions of the model's folder more than ``days`` before today (UTC) are
  deleted, then the oldest files while the folder holds more than ``max_bytes`` (the newest file always stays).
  Only ``<sink>/model=<name>/`` is touched: outcomes and other models' logs keep their own lifetimes.

The serving flags for all of them live here too (``add_policy_arguments``), with the log's flush interval
(``--payload-log-flush-seconds``, its durability bound on a SIGKILL).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass

from kfops.components import storage
from kfops.components.contracts import PAYLOAD_META_COLUMNS, PAYLOAD_PREDICTION_COLUMNS, KfopsError, partitions_of

log = logging.getLogger(__name__)

DEFAULT_SALT_ENV = "KFOPS_PAYLOAD_LOG_SALT"
DEFAULT_RETENTION_CHECK_SECONDS = 300.0
# The payload log's durability bound: a logged row is in the sink within this many seconds (payload_log.py).
DEFAULT_FLUSH_SECONDS = 2.0
_PROTECTED = frozenset(PAYLOAD_META_COLUMNS) | frozenset(PAYLOAD_PREDICTION_COLUMNS)
_DAY = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class FieldPolicy:
    """Fields dropped from, or hashed in, every payload-log record before it is written."""

    drop: frozenset[str] = frozenset()
    hash: frozenset[str] = frozenset()
    salt: bytes = b""

    def __post_init__(self) -> None:
        both = sorted(self.drop & self.hash)
        if both:
            raise KfopsError(f"payload log: field(s) {both} are both dropped and hashed; choose one")
        protected = sorted((self.drop | self.hash) & _PROTECTED)
        if protected:
            raise KfopsError(
                f"payload log: field(s) {protected} cannot be dropped or hashed: outcomes, monitoring and A/B "
                "analysis read them"
            )
        if self.hash and not self.salt:
            raise KfopsError("payload log: hashing fields needs a secret salt (see --payload-log-salt-env)")

    def __bool__(self) -> bool:
        return bool(self.drop or self.hash)

    def apply(self, record: dict) -> None:
        """Drop and hash ``record``'s fields in place (the logger owns records once they are logged)."""
        # Here, not at the top: every `kfops` command's parser imports this module, and records imports pandas.
        from kfops.components.records import pseudonymize

        for name in self.drop:
            record.pop(name, None)
        for name in self.hash:
            if name in record:
                record[name] = pseudonymize(record[name], self.salt)


@dataclass(frozen=True)
class Retention:
    """How long payload-log files stay: days of date partitions, and/or the model folder's total size."""

    days: int | None = None
    max_bytes: int | None = None
    check_seconds: float = DEFAULT_RETENTION_CHECK_SECONDS  # how often the writer thread enforces it

    def __post_init__(self) -> None:
        if self.days is not None and (isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 0):
            raise KfopsError(f"payload log: retention days must be a whole number >= 0, got {self.days!r}")
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes <= 0
        ):
            raise KfopsError(
                f"payload log: retention max_bytes must be a positive number of bytes, got {self.max_bytes!r}"
            )
        if not self.check_seconds > 0:
            raise KfopsError(f"payload log: retention check_seconds must be positive, got {self.check_seconds!r}")

    def __bool__(self) -> bool:
        return self.days is not None or self.max_bytes is not None

    def enforce(self, folder: str, today: dt.date | None = None) -> tuple[int, int]:
        """Delete what is past the limits under ``folder`` (one model's ``model=`` folder); returns (files, bytes)
        deleted. Storage errors propagate: the writer thread logs them and tries again at the next check."""
        today = today or dt.datetime.now(dt.UTC).date()
        doomed: list[tuple[str, int]] = []
        if self.days is not None:
            oldest_kept = today - dt.timedelta(days=self.days)
            for name in storage.list_folders(folder):
                match = _DAY.match(name)
                if match and dt.date.fromisoformat(match.group(1)) < oldest_kept:
                    doomed += storage.list_files(storage.join(folder, name))
        if self.max_bytes is not None:
            gone = {uri for uri, _ in doomed}
            files = sorted(
                (_age_key(folder, uri), uri, size) for uri, size in storage.list_files(folder) if uri not in gone
            )
            files = [f for f in files if f[0] is not None]
            total = sum(size for _, _, size in files)
            for _, uri, size in files[:-1]:  # oldest first; the newest file always stays
                if total <= self.max_bytes:
                    break
                doomed.append((uri, size))
                total -= size
        if doomed:
            storage.delete_files([uri for uri, _ in doomed])
        return len(doomed), sum(size for _, size in doomed)


def _age_key(folder: str, uri: str) -> tuple[str, str] | None:
    """(day, file name) of a payload-log file: files are named by their write time, so this sorts oldest first.
    None for a file outside a date partition (not the logger's: never deleted)."""
    relative = uri[len(folder.rstrip("/")) :].replace("\\", "/").strip("/")
    day = partitions_of(relative).get("date", "")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        return None
    return day, relative.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------ CLI
def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``500M``, ``10GiB``, ``2g`` (K/M/G/T are powers of 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise KfopsError(f"not a size: {text!r}; use a number of bytes or one with K, M, G or T (e.g. 500M, 10G)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise KfopsError(f"a size must be positive, got {text!r}")
    return size


def field_list(text: str | None) -> frozenset[str]:
    """Comma-separated field names (blanks ignored)."""
    return frozenset(name.strip() for name in (text or "").split(",") if name.strip())


def flush_seconds(text: str) -> float:
    """``--payload-log-flush-seconds``: a positive, finite number of seconds."""
    import argparse
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def add_policy_arguments(parser) -> None:
    """``--payload-log-flush-seconds``, ``--payload-log-retention-days``, ``--payload-log-max-bytes``,
    ``--payload-log-drop``, ``--payload-log-hash`` and ``--payload-log-salt-env`` on a serving parser."""
    parser.add_argument(
        "--payload-log-flush-seconds",
        type=flush_seconds,
        default=DEFAULT_FLUSH_SECONDS,
        help="the payload log's flush interval: a logged request is in the sink within this many seconds, so a "
        f"predictor killed outright (SIGKILL, OOM) loses at most its last interval of records (default "
        f"{DEFAULT_FLUSH_SECONDS:g}; SIGTERM loses none)",
    )
    parser.add_argument(
        "--payload-log-retention-days",
        type=int,
        help="delete payload-log date partitions more than this many days old (UTC)",
    )
    parser.add_argument(
        "--payload-log-max-bytes",
        help="keep the model's payload log under this size (e.g. 500M, 10G): the oldest files go first",
    )
    parser.add_argument(
        "--payload-log-drop", help="comma-separated fields never written to the payload log (e.g. email,phone)"
    )
    parser.add_argument(
        "--payload-log-hash",
        help="comma-separated fields written as a salted SHA-256 (HMAC) of their value (e.g. customer_id)",
    )
    parser.add_argument(
        "--payload-log-salt-env",
        default=DEFAULT_SALT_ENV,
        help=f"environment variable holding the secret salt for --payload-log-hash (default {DEFAULT_SALT_ENV})",
    )


def policy_argv(args) -> list[str]:
    """The policy flags ``args`` were given, to pass on to a child predictor (``kfops serve --challenger``)."""
    argv: list[str] = []
    for flag, value in (
        ("--payload-log-retention-days", getattr(args, "payload_log_retention_days", None)),
        ("--payload-log-max-bytes", getattr(args, "payload_log_max_bytes", None)),
        ("--payload-log-drop", getattr(args, "payload_log_drop", None)),
        ("--payload-log-hash", getattr(args, "payload_log_hash", None)),
    ):
        if value is not None and value != "":
            argv += [flag, str(value)]
    flush = getattr(args, "payload_log_flush_seconds", DEFAULT_FLUSH_SECONDS)
    if flush != DEFAULT_FLUSH_SECONDS:
        argv += ["--payload-log-flush-seconds", repr(flush)]
    salt_env = getattr(args, "payload_log_salt_env", DEFAULT_SALT_ENV)
    if salt_env != DEFAULT_SALT_ENV:
        argv += ["--payload-log-salt-env", salt_env]
    return argv


def policy_from_args(args) -> tuple[FieldPolicy | None, Retention | None]:
    """The field policy and retention the serving flags ask for (None for each not asked for)."""
    retention = Retention(
        days=args.payload_log_retention_days,
        max_bytes=parse_size(args.payload_log_max_bytes) if args.payload_log_max_bytes else None,
    )
    drop, hashed = field_list(args.payload_log_drop), field_list(args.payload_log_hash)
    salt = b""
    if hashed:
        salt = os.environ.get(args.payload_log_salt_env, "").encode("utf-8")
        if not salt:
            raise KfopsError(
                f"--payload-log-hash needs a secret salt in ${args.payload_log_salt_env}: set it (the same salt on "
                "every replica and restart, so one value keeps one hash) or name another variable with "
                "--payload-log-salt-env"
            )
    policy = FieldPolicy(drop=drop, hash=hashed, salt=salt)
    return policy or None, retention or None
