"""Promotion gate: which registered encoder version is ``@champion``.

Every evaluated encoder is registered as a new version with alias ``@challenger``
(the register stage, tasks/register.py). It then becomes ``@champion`` only if its linear-probe accuracy
beats the champion's by at least ``register.min_improvement``:

    no champion yet                                   -> promoted (reason "first")
    challenger > champion and the gain >= min_impr.   -> promoted ("better")
    otherwise (worse, equal, or too small a gain)     -> stays challenger ("not_better")

Equal never wins: a tie is no evidence, and moving the alias on noise churns consumers.

**Same evaluation data.** A probe accuracy only compares with one measured on the same
labeled set by the same protocol. Every version carries ``eval_data_version`` (DVC hash of
``data/prepared/labeled``) and ``eval_protocol`` (hash of the probe settings). When the
champion's tags differ from the challenger's, the champion's encoder is re-evaluated on
the current data with the same probe and that number is compared (and recorded with
``gate/champion_reevaluated=true``); the tag on the champion is never trusted across data.

**Like with like.** A version's ``modality`` tag (``image`` when absent) must match the
champion's: text encoders register as ``ssl-text-encoder`` and are only compared with text
encoders; a mix under one name is refused with a message.

**Concurrency.** register -> read champion -> compare -> move alias runs under one
cross-process file lock beside the sqlite store, and the champion is read inside it. Two
runs finishing together are serialised: the second is compared with the first if the
first won, so they cannot both beat the same champion, and both versions are kept.

A file lock covers one machine; machines sharing a tracking server meet only in the
registry. So :func:`gate`, :func:`promote` and :func:`rollback` also hold
:func:`champion_lock`, a lock in the registry itself: creating the registered model
``<name>.gate-lock`` succeeds for exactly one caller (the database's unique name is the
atomic compare-and-set MLflow offers; its tags cannot be swapped atomically). The holder
keeps a lease on it (a heartbeat renews ``expires``) and deletes it when done; a lock whose
lease ran out (its holder died) is taken over. After moving the alias the gate reads it
back and fails loudly if it is not what it wrote.

**Manual control.** ``promote VERSION`` and ``rollback``. Every change of champion pushes
the previous one onto the registered model's ``champion_history`` tag; rollback pops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tasks.registry.tracking import tracking_uri

HISTORY_TAG = "champion_history"
HISTORY_LIMIT = 50  # registry tag values are bounded; old history beyond this is dropped
LOCK_TIMEOUT_S = 900  # a re-evaluation of the champion can take minutes on a CPU
LOCK_SUFFIX = ".gate-lock"  # the registry-side lock of model NAME is the registered model NAME.gate-lock
LEASE_S = 120  # a registry lock not renewed for this long belongs to a dead process
HEARTBEAT_S = 20  # the holder renews its lease this often


class PromotionError(Exception):
    """A manual promote/rollback that cannot be done; the message says why."""


def lock_path(root: Path) -> Path:
    """Beside the sqlite database when the store is one (every process using that store
    finds the same lock), else in the project root."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        return Path(urlparse(uri).path + ".lock")
    return root / ".mlflow-registry.lock"


@contextlib.contextmanager
def registry_lock(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the cross-process registry lock; a clear error if another process keeps it."""
    from filelock import FileLock, Timeout

    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise PromotionError(f"{path}: another process has held the model-registry lock for {timeout:.0f} s") from None


def _lock_state(client, lock: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock).tags)
    except MlflowException:
        return None


def _renew(client, lock: str, token: str, stop: threading.Event) -> None:
    """Heartbeat: push the lease forward while the holder works (a re-evaluation can be long)."""
    while not stop.wait(HEARTBEAT_S):
        state = _lock_state(client, lock)
        if state is None or state.get("token") != token:
            return  # taken over (we stalled past the lease); the alias read-back will tell
        with contextlib.suppress(Exception):  # a missed beat is retried; the lease has slack
            client.set_registered_model_tag(lock, "expires", repr(time.time() + LEASE_S))


def _take_over_if_stale(client, lock: str) -> None:
    """Delete a lock whose lease has run out: its holder died without releasing it."""
    from mlflow.exceptions import MlflowException

    state = _lock_state(client, lock)
    if state and float(state.get("expires", "0")) < time.time():
        with contextlib.suppress(MlflowException):  # another waiter may have deleted it first
            client.delete_registered_model(lock)


@contextlib.contextmanager
def champion_lock(client, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the registry-side lock of ``name``: one holder at a time across every machine
    that shares the registry. Waits with jittered exponential backoff; a clear error naming
    the holder after ``timeout`` seconds."""
    from mlflow.exceptions import MlflowException

    lock, token = name + LOCK_SUFFIX, uuid.uuid4().hex
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    deadline, delay = time.monotonic() + timeout, 0.1
    while True:
        tags = {"token": token, "holder": holder, "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "expires": repr(time.time() + LEASE_S)}
        try:
            client.create_registered_model(
                lock, tags=tags, description=f"promotion-gate lock of {name}, held by {holder}; deleted when done"
            )
            break
        except MlflowException as err:
            # "Not found" from a create: the lock existed, so the insert failed, and its holder
            # deleted it before the server looked it up to word the error. It is free: try again.
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        _take_over_if_stale(client, lock)
        if time.monotonic() > deadline:
            state = _lock_state(client, lock) or {}
            raise PromotionError(
                f"registered model {lock} (the promotion-gate lock) has been held for {timeout:.0f} s by "
                f"{state.get('holder', '?')} since {state.get('since', '?')}"
            )
        time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: waiters do not retry in lockstep
        delay = min(delay * 2, 5.0)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_renew, args=(client, lock, token, stop), daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        if (_lock_state(client, lock) or {}).get("token") == token:  # never delete a lock taken over
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str  # first | better | not_better | same_weights
    challenger_version: int
    challenger_acc: float
    champion_version: int | None  # the champion it was compared against
    champion_acc: float | None
    champion_reevaluated: bool
    min_improvement: float

    def tags(self) -> dict[str, str]:
        """For the challenger's model version and the pipeline's run. ``gate`` (promoted |
        rejected) is the short one the registry's versions table shows first."""
        decision = "promoted" if self.promoted else "rejected"
        return {
            "gate": decision,
            "gate/decision": decision,
            "gate/reason": self.reason,
            "gate/challenger_version": str(self.challenger_version),
            "gate/challenger_probe_acc": f"{self.challenger_acc:.4f}",
            "gate/champion_version": "" if self.champion_version is None else str(self.champion_version),
            "gate/champion_probe_acc": "" if self.champion_acc is None else f"{self.champion_acc:.4f}",
            "gate/champion_reevaluated": str(self.champion_reevaluated).lower(),
            "gate/min_improvement": f"{self.min_improvement:.4f}",
        }

    def metrics(self) -> dict[str, float]:
        out = {"gate/challenger_probe_acc": self.challenger_acc, "gate/promoted": float(self.promoted)}
        if self.champion_acc is not None:
            out["gate/champion_probe_acc"] = self.champion_acc
        return out

    def verdict(self, champion_alias: str = "champion") -> str:
        """The version description's first sentence, true for as long as the version exists
        (it may hold ``@challenger`` now, not after the next registration)."""
        if self.reason == "same_weights":
            return f"Kept @{champion_alias} by the promotion gate: the same weights as the champion."
        if self.promoted:
            return f"Promoted to @{champion_alias} by the promotion gate."
        return (
            f"Rejected by the promotion gate: not made @{champion_alias}, which stayed version {self.champion_version}; "
            "use it only as a candidate (or `sslpipe promote` it by hand)."
        )

    def summary(self) -> str:
        if self.reason == "first":
            return f"version {self.challenger_version} is the first champion (probe {self.challenger_acc:.4f})"
        if self.reason == "same_weights":
            return f"version {self.challenger_version} stays champion: the same weights (probe {self.challenger_acc:.4f})"
        against = f"champion v{self.champion_version} {self.champion_acc:.4f}" + (
            " (re-evaluated on this data)" if self.champion_reevaluated else ""
        )
        verdict = "promoted to champion" if self.promoted else "not promoted"
        return (
            f"version {self.challenger_version} {verdict}: probe {self.challenger_acc:.4f} vs {against}, "
            f"min improvement {self.min_improvement:g}"
        )


def beats(challenger_acc: float, champion_acc: float, min_improvement: float) -> bool:
    """Strictly better, by at least ``min_improvement``. The 1e-9 absorbs float noise in the
    difference, so a gain of exactly ``min_improvement`` counts."""
    gain = challenger_acc - champion_acc
    return gain > 1e-9 and gain >= min_improvement - 1e-9


def current_champion(client, name: str, alias: str):
    """The ModelVersion holding ``alias``, or None (also when the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return None
    return client.get_model_version(name, aliases[alias]) if alias in aliases else None


def comparable(a, b) -> bool:
    """Both scored on the same evaluation data by the same protocol, with a recorded score."""
    keys = ("eval_data_version", "eval_protocol")
    return all(a.tags.get(k) and a.tags.get(k) == b.tags.get(k) for k in keys) and "probe_acc" in a.tags


def modality_of(model_version) -> str:
    """ "text" or "image" (versions registered before text existed carry no tag: images)."""
    return model_version.tags.get("modality", "image")


def _history(client, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def _check_alias(client, name: str, alias: str, version: str) -> None:
    """Read the alias back: under the lock it holds what we wrote; anything else means a writer
    that bypassed the lock, and must not pass silently."""
    found = str(client.get_registered_model(name).aliases.get(alias))
    if found != str(version):
        raise PromotionError(f"{name}@{alias} reads version {found} right after it was set to {version}: another process moved it")


def _set_champion(client, name: str, alias: str, version: str | int, previous: str | int | None) -> None:
    """Move ``alias`` to ``version``, remembering ``previous`` for rollback."""
    # MLflow hands version numbers out as str or int depending on the call; keep them str.
    version, previous = str(version), None if previous is None else str(previous)
    client.set_registered_model_alias(name, alias, version)
    _check_alias(client, name, alias, version)
    if previous is not None and previous != version:
        history = [*_history(client, name), previous][-HISTORY_LIMIT:]
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        client.set_model_version_tag(name, version, "previous_champion", previous)


def gate(
    client, name: str, version, challenger_acc: float, alias: str, min_improvement: float, rescore: Callable[[object], float]
) -> Decision:
    """Decide whether ``version`` (a ModelVersion) replaces the champion, and move the alias if so.

    The caller holds :func:`registry_lock` (this machine); the gate takes :func:`champion_lock`
    (every machine sharing the registry). ``rescore(model_version)`` returns a champion's
    probe accuracy on the current evaluation data; it is only called when the champion
    was scored on other data.
    """
    with champion_lock(client, name):
        champion = current_champion(client, name, alias)
        if champion is not None and modality_of(champion) != modality_of(version):
            # Probe accuracies of a text and an image encoder measure different things.
            raise PromotionError(
                f"{name}@{alias} (version {champion.version}) is an {modality_of(champion)} encoder, version {version.version} a "
                f"{modality_of(version)} one: the gate compares like with like; register them under different names "
                "(register.model_name for images, register.text_model_name for text)"
            )
        if champion is None:
            decision = Decision(True, "first", int(version.version), challenger_acc, None, None, False, min_improvement)
        elif champion.version == version.version:  # the champion's own weights, registered again: it stays
            decision = Decision(
                True, "same_weights", int(version.version), challenger_acc, int(champion.version), challenger_acc, False, 0.0
            )
        else:
            reevaluated = not comparable(champion, version)
            champion_acc = rescore(champion) if reevaluated else float(champion.tags["probe_acc"])
            promoted = beats(challenger_acc, champion_acc, min_improvement)
            reason = "better" if promoted else "not_better"
            decision = Decision(
                promoted, reason, int(version.version), challenger_acc, int(champion.version), champion_acc, reevaluated, min_improvement
            )
        if decision.promoted:
            _set_champion(client, name, alias, version.version, None if champion is None else champion.version)
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, version.version, key, value)
    return decision


def promote(client, name: str, version: str, alias: str) -> str | None:
    """Make ``version`` the champion by hand; returns the previous champion's version (or None)."""
    with champion_lock(client, name):
        return _promote(client, name, version, alias)


def rollback(client, name: str, alias: str) -> tuple[str, str | None]:
    """Move ``alias`` back to the champion before the current one; returns (restored, replaced)."""
    with champion_lock(client, name):
        return _rollback(client, name, alias)


def _promote(client, name: str, version: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise PromotionError(f"no registered model {name!r} in the registry") from None
    try:
        target = client.get_model_version(name, str(int(version)))
    except (MlflowException, ValueError):
        known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise PromotionError(f"{name} has no version {version!r} (versions: {', '.join(map(str, known)) or 'none'})") from None
    previous = current_champion(client, name, alias)
    if previous is not None and str(previous.version) == str(target.version):
        raise PromotionError(f"{name} version {target.version} already is @{alias}")
    _set_champion(client, name, alias, target.version, None if previous is None else previous.version)
    client.set_model_version_tag(name, target.version, "gate", "promoted")
    client.set_model_version_tag(name, target.version, "gate/decision", "promoted")
    client.set_model_version_tag(name, target.version, "gate/reason", "manual")
    if target.tags.get("gate") == "rejected" or (target.description or "").startswith("Rejected"):
        # Its description began "Rejected by the promotion gate"; say first what it is now.
        was = "none" if previous is None else f"version {previous.version}"
        note = f"Promoted to @{alias} by hand (`sslpipe promote`), replacing {was}; the gate had rejected it:\n\n"
        client.update_model_version(name, str(target.version), description=note + (target.description or ""))
    return None if previous is None else str(previous.version)


def _rollback(client, name: str, alias: str) -> tuple[str, str | None]:
    from mlflow.exceptions import MlflowException

    try:
        history = _history(client, name)
    except MlflowException:
        raise PromotionError(f"no registered model {name!r} in the registry") from None
    if not history:
        raise PromotionError(f"nothing to roll back: {name} has no earlier @{alias}")
    restored = history[-1]
    try:
        client.get_model_version(name, restored)
    except MlflowException:
        raise PromotionError(f"cannot roll back: {name} version {restored} (the previous @{alias}) no longer exists") from None
    replaced = current_champion(client, name, alias)
    client.set_registered_model_alias(name, alias, restored)
    _check_alias(client, name, alias, restored)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    return restored, None if replaced is None else str(replaced.version)
