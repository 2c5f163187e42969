"""Leases in MLflow: one holder at a time, an expiry the holder renews, takeover once it lapses.

MLflow has no transactions or compare-and-set, but creating a registered model whose name exists
fails (a primary key in the SQL store) for threads, processes and machines alike. A lease named
``rollout-lock`` of registered model ``qwen3-vl`` is the registered model ``qwen3-vl.rollout-lock``;
its tags say who holds it (a random token, the holder's name), since when and until when.

- ``acquire`` creates it. If it exists and its expiry has passed (its holder died or hung), one
  taker wins the right to replace it by creating ``<lease>.takeover-<token>`` (unique per expired
  token), re-reads that the expired token is still there, deletes and re-creates the lease, and
  records whom it took over from.
- ``renew`` moves the expiry forward while the token is still the holder's and not yet expired; it
  never writes the token, so a late renewal cannot steal a lease back.
- ``release`` deletes the lease only while it still carries the holder's token and has time left,
  so a holder that lost its lease never deletes the next holder's.

Expiry uses the machines' wall clocks (keep them in NTP sync); a ttl of seconds tolerates ordinary
skew. Without compare-and-set a few milliseconds of overlap remain possible when a holder's clock is
off by more than its ttl; the rollout actions also compare the generation counter, so a stale
holder still cannot apply a plan made from an old state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType

from mlflow.exceptions import MlflowException

from core.names import check_model_name
from registry.errors import ConcurrentChangeError, NotFoundError
from registry.store import ALREADY_EXISTS, DOES_NOT_EXIST, Store, error_code

log = logging.getLogger(__name__)

TOKEN_TAG = "lease.token"
HOLDER_TAG = "lease.holder"
SINCE_TAG = "lease.since"
EXPIRES_TAG = "lease.expires_at"  # unix seconds
TTL_TAG = "lease.ttl_s"
TOOK_OVER_TAG = "lease.took_over_from"


def lease_model_name(store: Store, name: str) -> str:
    """The registered model that holds lease ``name`` of ``store``'s model."""
    return f"{store.model}.{check_model_name(name, 'lease name')}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def _read(store: Store, model_name: str) -> dict[str, str] | None:
    try:
        return dict(store.client.get_registered_model(model_name).tags or {})
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            return None
        raise


def _expires_at(tags: dict[str, str]) -> float:
    try:
        return float(tags.get(EXPIRES_TAG, "0"))
    except ValueError:
        return 0.0  # unreadable expiry: treat as lapsed rather than blocking forever


def _describe_tags(tags: dict[str, str], now: float) -> str:
    left = _expires_at(tags) - now
    expiry = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
    return f"{tags.get(HOLDER_TAG, '?')} since {tags.get(SINCE_TAG, '?')}, {expiry}"


def describe(store: Store, name: str) -> str | None:
    """Who holds lease ``name`` and until when, or None when nobody does."""
    tags = _read(store, lease_model_name(store, name))
    return None if tags is None else _describe_tags(tags, time.time())


def force_release(store: Store, name: str) -> str:
    """Delete lease ``name`` whoever holds it (``python -m registry unlock``); return who held it."""
    model_name = lease_model_name(store, name)
    holder = describe(store, name)
    try:
        store.client.delete_registered_model(model_name)
    except MlflowException as exc:
        if error_code(exc) == DOES_NOT_EXIST:
            raise NotFoundError(f"{store.model} has no {name} to clear") from exc
        raise
    return holder or "nobody"


class Lease:
    """One holder's claim on lease ``name``. ``with lease:`` acquires or raises ConcurrentChangeError."""

    def __init__(self, store: Store, name: str, holder: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl {ttl_s} must be positive seconds")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.model_name = lease_model_name(store, name)
        #: Who held the lease before this holder took it over after it expired; None if it was free.
        self.took_over_from: str | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        """True while this holder acquired the lease, has not lost or released it, and it has not expired."""
        return self._token is not None and time.time() < self._expires

    def acquire(self) -> bool:
        """Take the lease if it is free or expired (never waits); True if this holder now holds it."""
        with self._lock:
            if self.held:
                return self._renew_locked()
            self.took_over_from = None
            current = _read(self.store, self.model_name)
            if current is None:
                return self._create()
            if time.time() < _expires_at(current):
                return False
            return self._take_over(current)

    def renew(self) -> bool:
        """Push the expiry ``ttl_s`` ahead; False (and no longer held) if the lease was lost or lapsed."""
        with self._lock:
            return self._renew_locked()

    def release(self) -> None:
        """Delete the lease if it still carries this holder's token and has time left (compare-and-delete)."""
        with self._lock:
            token, self._token = self._token, None
            if token is None:
                return
            current = _read(self.store, self.model_name)
            if current is None or current.get(TOKEN_TAG) != token:
                log.warning("lease %s was lost before release (taken over or cleared by `unlock`)", self.model_name)
                return
            # Close to expiry a taker may already be replacing it: leave it to lapse instead.
            if time.time() > self._expires - min(1.0, self.ttl_s / 4):
                log.warning("lease %s expired before release; leaving it to lapse", self.model_name)
                return
            try:
                self.store.client.delete_registered_model(self.model_name)
            except MlflowException as exc:
                if error_code(exc) != DOES_NOT_EXIST:
                    raise

    @contextmanager
    def renewing(self, every_s: float | None = None) -> Iterator[Lease]:
        """Renew from a background thread every ``every_s`` (default ttl/3) while the block runs."""
        interval = every_s if every_s is not None else self.ttl_s / 3
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    if not self.renew():
                        log.warning("lease %s lost; %s no longer holds it", self.model_name, self.holder)
                        return
                except MlflowException as exc:
                    # A hiccup: the next beat retries; the lease lapses by itself if MLflow stays down.
                    log.warning("renewing lease %s failed: %s", self.model_name, exc.message)

        thread = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=interval + 1)

    def __enter__(self) -> Lease:
        if not self.acquire():
            holder = describe(self.store, self.name) or "a holder that just released it"
            raise ConcurrentChangeError(f"{self.model_name} is held by {holder}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # Internals; callers hold self._lock.

    def _tags(self, token: str, now: float) -> dict[str, str]:
        tags = {
            TOKEN_TAG: token,
            HOLDER_TAG: self.holder,
            SINCE_TAG: _iso(now),
            EXPIRES_TAG: f"{now + self.ttl_s:.3f}",
            TTL_TAG: f"{self.ttl_s:g}",
        }
        if self.took_over_from:
            tags[TOOK_OVER_TAG] = self.took_over_from
        return tags

    def _create(self) -> bool:
        token, now = uuid.uuid4().hex, time.time()
        try:
            self.store.client.create_registered_model(
                self.model_name,
                tags=self._tags(token, now),
                description=f"Lease `{self.name}` of {self.store.model}: whoever's token is in the tags holds it "
                "until lease.expires_at. Deleted on release; taken over once expired.",
            )
        except MlflowException as exc:
            if error_code(exc) == ALREADY_EXISTS:
                return False
            raise
        self._token, self._expires = token, now + self.ttl_s
        return True

    def _take_over(self, expired: dict[str, str]) -> bool:
        old_token = expired.get(TOKEN_TAG, "none")
        marker = f"{self.model_name}.takeover-{old_token[:32]}"
        if not self._claim_marker(marker):
            return False
        try:
            again = _read(self.store, self.model_name)
            if again is not None and again.get(TOKEN_TAG) != old_token:
                return False  # someone else replaced it first
            if again is None:
                return self._create()  # released meanwhile: an ordinary acquisition
            try:
                self.store.client.delete_registered_model(self.model_name)
            except MlflowException as exc:
                if error_code(exc) != DOES_NOT_EXIST:
                    raise
            self.took_over_from = _describe_tags(expired, time.time())
            if not self._create():
                self.took_over_from = None
                return False
            log.warning("lease %s: %s took over from %s", self.model_name, self.holder, self.took_over_from)
            return True
        finally:
            # Safe once the expired token is gone: nobody can find it again to take it over twice.
            self._drop_marker(marker)

    def _claim_marker(self, marker: str) -> bool:
        now = time.time()
        for _ in range(2):
            try:
                self.store.client.create_registered_model(marker, tags={EXPIRES_TAG: f"{now + self.ttl_s:.3f}"})
                return True
            except MlflowException as exc:
                if error_code(exc) != ALREADY_EXISTS:
                    raise
            found = _read(self.store, marker)
            if found is not None and time.time() < _expires_at(found):
                return False  # another taker is at work
            # A taker died mid-takeover and left its marker: clear it and try once more.
            self._drop_marker(marker)
        return False

    def _drop_marker(self, marker: str) -> None:
        try:
            self.store.client.delete_registered_model(marker)
        except MlflowException as exc:
            if error_code(exc) != DOES_NOT_EXIST:
                raise

    def _renew_locked(self) -> bool:
        token = self._token
        if token is None:
            return False
        now = time.time()
        current = _read(self.store, self.model_name)
        if now >= self._expires or current is None or current.get(TOKEN_TAG) != token:
            self._token = None
            return False
        self.store.client.set_registered_model_tag(self.model_name, EXPIRES_TAG, f"{now + self.ttl_s:.3f}")
        # Confirm the tag landed on this holder's lease and not a successor's.
        confirmed = _read(self.store, self.model_name)
        if confirmed is None or confirmed.get(TOKEN_TAG) != token:
            self._token = None
            return False
        self._expires = now + self.ttl_s
        return True
