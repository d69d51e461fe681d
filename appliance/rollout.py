"""Canary rollouts: ``appliance rollout start|status|pause|resume|abort`` and their controller.

A rollout moves the requests that name no version from the version serving them (the stable)
to a candidate in steps (default 1, 5, 25, 50, 100 %). Each step is a change of the cluster
settings (:mod:`appliance.fleet`): ``models.<m>.rollout.version/percent``. Every model server
loads the candidate on top of its version policy, which never picks a version a rollout names
(``ModelSettings.candidates``: under ``latest`` a candidate that is the newest version on disk
stays out of the policy's choice), and splits the same way (:mod:`modelserver.rollout`). The
user's ``versions`` is left alone while the rollout runs.

Where it runs: the controller is a tick of the agent of the node where ``rollout start`` was
typed (:mod:`appliance.agent.fleetwatch`); its state is one object in the repository,
``.appliance/rollouts/<model>.json``, so an agent restart resumes it, and history stays there
(``.appliance/rollouts/history/<id>.json``, listed by the logviewer's Rollouts page).

Each tick sums the per-version counts every serving node reports since the step began and
checks the guards against the stable: error rate (at most ``max_error_increase`` above the
stable's), latency (a p99 at most ``max_p99_ratio`` times the stable's in the same window and
a p50 at most ``max_p50_ratio`` times, each passing when within ``p99_floor_ms`` of the
stable's), and, when a shadow ran first, answer agreement (the hook
:func:`shadow_agreement`). Guards are judged as soon as the candidate has ``min_requests``
requests in the step, so a bad candidate is rolled back at once; a step ends when it has
lasted ``min_seconds`` and the candidate served ``min_requests`` -- a step short of traffic
*holds* (state ``holding``, with how much it waits for) and never fails for want of data. A
failed guard rolls every node back with one push (the split removed) and records why.

When the rollout ends the policy decides again, so what it would serve then decides the push
(:func:`policy_serves`). After the last step the candidate is promoted: when the policy serves it
by itself (``latest`` or ``all`` and a candidate newer than the stable -- the usual case) the
split is just removed and ``versions`` stays the user's; otherwise (a ``specific`` policy
without it, a candidate older than the stable) the cluster settings pin
``versions: specific:CANDIDATE``. On a rollback or abort it is the other way round: when the
policy would serve the candidate it just turned down (``latest`` and the candidate on disk), the
cluster settings pin ``versions: specific:STABLE`` in the same push.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from modelserver.rollout import BUCKETS_MS, percentile_ms

from .config import Config
from .errors import ApplianceError
from .fleet import Fleet
from .modelsettings import version_policy

log = logging.getLogger(__name__)

DEFAULT_STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)
ACTIVE = ("running", "holding")
DONE = ("promoted", "rolled_back", "aborted")
MAX_EVENTS = 200
KEYS = ("rollout.version", "rollout.percent")


@dataclass
class Guards:
    min_seconds: float = 60.0          # each step lasts at least this long
    min_requests: int = 100            # ... and the candidate serves at least this many in it
    max_error_increase: float = 0.01   # candidate error rate minus stable's (0.01 = 1 point)
    max_p99_ratio: float = 1.5         # candidate p99 / stable p99
    p99_floor_ms: float = 2.0          # a p50/p99 this close to the stable's is never a regression
    min_agreement: float = 0.99        # shadow answer agreement (when a shadow report exists)
    # The median too: one stall on a busy node moves a p99 of a few hundred requests as much as
    # the candidate does, while a candidate twice as slow shows in every request.
    max_p50_ratio: float = 1.5         # candidate p50 / stable p50


@dataclass
class Rollout:
    """The state object of one rollout (``.appliance/rollouts/<model>.json``)."""

    model: str
    candidate: int
    stable: int
    controller: str                        # node.address of the agent that runs it
    steps: list[float] = field(default_factory=lambda: list(DEFAULT_STEPS))
    guards: Guards = field(default_factory=Guards)
    id: str = ""
    state: str = "running"                 # running, holding, paused, promoted, rolled_back, aborted
    step: int = 0
    step_started: float = 0.0              # wall clock, seconds
    revision: int = 0                      # the cluster settings revision of this step
    base: dict[str, Any] = field(default_factory=dict)     # node -> counts at the step's start
    reference: dict[str, Any] = field(default_factory=dict)  # the stable's last window (for 100 %)
    window: dict[str, Any] = field(default_factory=dict)   # this step's numbers so far
    reason: str = ""
    policy: str = "latest"                 # the model's versions policy when the rollout started
    seq: int = 0                           # bumped by every writer: a stale write is dropped
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return self.steps[self.step]

    def event(self, what: str) -> None:
        log.info("rollout %s v%d: %s", self.model, self.candidate, what)
        self.events = (self.events + [{"time": time.time(), "what": what}])[-MAX_EVENTS:]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Rollout":
        doc = json.loads(data)
        doc["guards"] = Guards(**doc.get("guards", {}))
        doc.pop("versions_before", None)    # written by rollouts that pinned both versions
        return cls(**doc)


def state_key(model: str) -> str:
    return f"rollouts/{model}.json"


def read(fleet: Fleet, model: str) -> Rollout | None:
    data = fleet.read_object(state_key(model))
    return None if data is None else Rollout.from_json(data)


def history(fleet: Fleet) -> list[Rollout]:
    """Every rollout recorded (running ones and finished ones), newest first."""
    out = []
    for key in fleet.list_objects("rollouts/"):
        data = fleet.read_object(key)
        if data is not None:
            out.append(Rollout.from_json(data))
    seen: dict[str, Rollout] = {}
    for item in out:     # a running rollout is in both places once it has a history copy
        seen[item.id] = item if item.id not in seen or item.seq >= seen[item.id].seq else seen[item.id]
    return sorted(seen.values(), key=lambda r: r.id, reverse=True)


def _write(fleet: Fleet, rollout: Rollout, expect_seq: int | None = None) -> bool:
    """Write the state (and its history copy); False (nothing written) when another writer
    changed it since ``expect_seq`` was read."""
    if expect_seq is not None:
        now = read(fleet, rollout.model)
        if now is not None and now.seq != expect_seq:
            return False
    rollout.seq += 1
    data = rollout.to_json()
    fleet.write_object(state_key(rollout.model), data)
    fleet.write_object(f"rollouts/history/{rollout.id}.json", data)
    return True


# ----------------------------------------------------------------------------- the commands


def start(fleet: Fleet, config: Config, model: str, candidate: int, stable: int,
          steps: Iterable[float] = DEFAULT_STEPS, guards: Guards | None = None) -> Rollout:
    """Begin a rollout controlled by this node's agent: push the first step."""
    if model not in config.model.names:
        raise ApplianceError(f"model {model!r} is not served here (model.name: "
                             f"{','.join(config.model.names)})")
    current = read(fleet, model)
    if current is not None and current.state not in DONE:
        raise ApplianceError(f"a rollout of {model} v{current.candidate} is {current.state}: "
                             f"`appliance rollout abort {model}` first")
    if candidate == stable:
        raise ApplianceError(f"version {candidate} is the version {model} serves now")
    steps = [float(s) for s in steps]
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps) or steps[-1] != 100:
        raise ApplianceError(f"steps must rise from above 0 to 100, got {steps}")
    policy = fleet.read().model(model).get("versions") or config.model.settings[model].versions
    rollout = Rollout(model, candidate, stable, config.node.address, steps, guards or Guards(),
                      id=f"{model}-v{candidate}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}",
                      step_started=time.time(), policy=str(version_policy(policy)))
    rollout.event(f"started: {stable} -> {candidate} in steps {_steps(steps)}, controller {rollout.controller}")
    _push_step(fleet, rollout)
    _write(fleet, rollout)
    return rollout


def pause(fleet: Fleet, model: str) -> Rollout:
    return _command(fleet, model, ACTIVE, "paused", "paused by the operator (the split stays)")


def resume(fleet: Fleet, model: str) -> Rollout:
    return _command(fleet, model, ("paused",), "running", "resumed by the operator: the step starts again")


def abort(fleet: Fleet, model: str) -> Rollout:
    rollout = _command(fleet, model, (*ACTIVE, "paused"), "aborted", "aborted by the operator")
    _roll_back(fleet, rollout, "aborted by the operator")
    _write(fleet, rollout)      # with the pin's event, if any
    return rollout


def _command(fleet: Fleet, model: str, allowed: tuple[str, ...], state: str, what: str) -> Rollout:
    rollout = read(fleet, model)
    if rollout is None:
        raise ApplianceError(f"no rollout of {model} was ever started")
    if rollout.state not in allowed:
        raise ApplianceError(f"the rollout of {model} v{rollout.candidate} is {rollout.state}")
    rollout.state = state
    rollout.step_started, rollout.base, rollout.revision = time.time(), {}, fleet.read().revision
    rollout.event(what)
    _write(fleet, rollout)
    return rollout


def _steps(steps: Iterable[float]) -> str:
    return ",".join(f"{s:g}" for s in steps)


# ----------------------------------------------------------------------------- pushes


def _push_step(fleet: Fleet, rollout: Rollout) -> None:
    """Push the current step; its window starts on each node with that node's first report of
    this revision (:func:`_window`)."""
    rollout.base = {}
    rollout.revision = fleet.push(rollout.model, {"rollout.version": rollout.candidate,
                                                  "rollout.percent": rollout.percent},
                                  why=f"rollout of {rollout.model} v{rollout.candidate}: step {rollout.step + 1} "
                                      f"({rollout.percent:g}%)").revision


def policy_serves(rollout: Rollout) -> int:
    """The version the model's versions policy answers requests naming no version with once no
    rollout names the candidate: the newer of stable and candidate it serves (under ``latest``
    nothing on disk is newer than both: the policy chose the stable with the candidate there)."""
    policy = version_policy(rollout.policy)
    pair = {rollout.stable, rollout.candidate}
    if policy.kind == "specific":
        pair &= set(policy.versions)
    return max(pair, default=rollout.stable)


def _end(fleet: Fleet, rollout: Rollout, serving: int, why: str) -> None:
    """Remove the split; pin ``serving`` only when the policy would serve another version."""
    chosen = policy_serves(rollout)
    pin = {} if chosen == serving else {"versions": f"specific:{serving}"}
    if pin:
        rollout.event(f"versions pinned to specific:{serving} on every node (the policy "
                      f"{rollout.policy} would serve v{chosen})")
    fleet.push(rollout.model, pin, unset=list(KEYS), why=why)


def _roll_back(fleet: Fleet, rollout: Rollout, why: str) -> None:
    _end(fleet, rollout, rollout.stable, f"rollback of {rollout.model} v{rollout.candidate}: {why}")


def _promote(fleet: Fleet, rollout: Rollout) -> None:
    _end(fleet, rollout, rollout.candidate, f"rollout of {rollout.model} v{rollout.candidate}: promoted")


# ----------------------------------------------------------------------------- the controller


def tick(fleet: Fleet, config: Config) -> None:
    """One look at every rollout this node controls (the agent calls it about twice a second)."""
    for model in config.model.names:
        rollout = read(fleet, model)
        if rollout is None or rollout.controller != config.node.address or rollout.state not in ACTIVE:
            continue
        seq = rollout.seq
        _advance(fleet, rollout)
        _write(fleet, rollout, expect_seq=seq)


def _advance(fleet: Fleet, rollout: Rollout) -> None:
    now = time.time()
    applied = bool(rollout.base)
    window = _window(fleet, rollout)
    if not rollout.base:
        return      # no node has applied this step yet: nothing to judge, nothing to wait for
    if not applied:
        rollout.step_started = now    # the step's minimum time counts from when it applies
    rollout.window = window
    cand, stable = window["candidate"], window["stable"]
    if stable["requests"] >= rollout.guards.min_requests:
        rollout.reference = stable     # at 100 % the stable gets nothing: its last good window
    failed = _failed_guard(rollout, cand, stable)
    if failed:
        rollout.state, rollout.reason = "rolled_back", failed
        rollout.event(f"guard failed at {rollout.percent:g}%: {failed}; rolling back every node")
        _roll_back(fleet, rollout, failed)
        return
    g = rollout.guards
    elapsed = now - rollout.step_started
    if elapsed < g.min_seconds:
        return
    if cand["requests"] < g.min_requests:
        if rollout.state != "holding":
            rollout.state = "holding"
            rollout.reason = (f"holding at {rollout.percent:g}%: the candidate served {cand['requests']} "
                              f"of the {g.min_requests} requests a step needs")
            rollout.event(rollout.reason)
        return
    if rollout.state == "holding":
        rollout.state, rollout.reason = "running", ""
        rollout.event("traffic is back: the step completes")
    rollout.event(f"step {rollout.step + 1} ({rollout.percent:g}%) passed: "
                  f"{_describe(cand, stable if stable['requests'] else rollout.reference or stable)}")
    if rollout.step + 1 >= len(rollout.steps):
        rollout.state, rollout.reason = "promoted", f"version {rollout.candidate} serves every request"
        rollout.event(rollout.reason)
        _promote(fleet, rollout)
        return
    rollout.step += 1
    rollout.step_started = now
    _push_step(fleet, rollout)


def _failed_guard(rollout: Rollout, cand: dict[str, Any], stable: dict[str, Any]) -> str:
    """Why the candidate fails a guard, or "" (also when it has too few requests to judge).

    Latency is compared only within one window where both versions served ``min_requests``:
    the node's load moves both alike, while the stable's numbers of an earlier step (all there
    is at 100 %) were taken under another load. Error rates are less load-bound: at 100 % the
    candidate's is held against the stable's last window."""
    g = rollout.guards
    if cand["requests"] < g.min_requests:
        return ""
    same_window = stable["requests"] >= g.min_requests
    reference = stable if same_window else rollout.reference or stable
    cand_rate = cand["errors"] / cand["requests"]
    stable_rate = reference["errors"] / reference["requests"] if reference.get("requests") else 0.0
    if cand_rate > stable_rate + g.max_error_increase:
        return (f"error rate {cand_rate:.1%} on v{rollout.candidate} vs {stable_rate:.1%} on "
                f"v{rollout.stable} (allowed: +{g.max_error_increase:.1%}), "
                f"{cand['errors']} of {cand['requests']} requests failed")
    for name, ratio in (("p99", g.max_p99_ratio), ("p50", g.max_p50_ratio)):
        mine, theirs = cand.get(f"{name}_ms"), stable.get(f"{name}_ms")
        if (same_window and mine is not None and theirs and mine > theirs * ratio
                and mine - theirs > g.p99_floor_ms):
            return (f"{name} latency {mine:.1f} ms on v{rollout.candidate} vs {theirs:.1f} ms on "
                    f"v{rollout.stable} (allowed: x{ratio:g})")
    agreement = shadow_agreement(rollout)
    if agreement is not None and agreement < g.min_agreement:
        return f"answer agreement {agreement:.1%} in the shadow run (needed: {g.min_agreement:.1%})"
    return ""


#: Set by the shadow feature: (fleet, model, candidate) -> the candidate's answer agreement with
#: the stable (0..1) from the shadow run before the rollout, or None when none ran.
AGREEMENT_SOURCE: Callable[[Rollout], float | None] | None = None


def shadow_agreement(rollout: Rollout) -> float | None:
    return AGREEMENT_SOURCE(rollout) if AGREEMENT_SOURCE is not None else None


def _describe(cand: dict[str, Any], stable: dict[str, Any]) -> str:
    def one(side: dict[str, Any]) -> str:
        rate = side["errors"] / side["requests"] if side.get("requests") else 0.0
        latency = ", ".join(f"{q} " + (f"{side[f'{q}_ms']:.1f} ms" if side.get(f"{q}_ms") is not None else "-")
                            for q in ("p50", "p99"))
        return f"{side.get('requests', 0)} requests, {rate:.1%} errors, {latency}"
    return f"candidate {one(cand)}; stable {one(stable)}"


# ----------------------------------------------------------------------------- counts


def _window(fleet: Fleet, rollout: Rollout) -> dict[str, Any]:
    """The candidate's and the stable's requests, errors and p99 since the step began, summed
    over the serving nodes. A node's step begins with its first report of the step's revision
    (written right after it applied it: what it counted before belongs to no step); a node whose
    counts went down restarted: all of its counts count."""
    now = {}
    for node, doc in fleet.reports().items():
        if doc.get("role") != "serving" or int(doc.get("revision", 0)) < rollout.revision:
            continue
        if node not in rollout.base:
            rollout.base[node] = doc.get("counts", {})
        now[node] = doc.get("counts", {})
    sides = {"candidate": rollout.candidate, "stable": rollout.stable}
    out: dict[str, Any] = {}
    for side, version in sides.items():
        requests = errors = 0
        buckets = [0] * (len(BUCKETS_MS) + 1)
        for node, counts in now.items():
            row = counts.get(rollout.model, {}).get(str(version))
            if not row:
                continue
            base = rollout.base.get(node, {}).get(rollout.model, {}).get(str(version)) or {}
            if base.get("requests", 0) > row["requests"]:
                base = {}
            requests += row["requests"] - base.get("requests", 0)
            errors += row["errors"] - base.get("errors", 0)
            old = base.get("buckets") or [0] * len(buckets)
            buckets = [b + n - o for b, n, o in zip(buckets, row["buckets"], old)]
        out[side] = {"version": version, "requests": requests, "errors": errors,
                     "p50_ms": percentile_ms(buckets, 0.5), "p99_ms": percentile_ms(buckets, 0.99)}
    return out


# ----------------------------------------------------------------------------- status text


def status_lines(rollout: Rollout) -> list[str]:
    lines = [f"rollout {rollout.id}: {rollout.model} v{rollout.stable} -> v{rollout.candidate}",
             f"state: {rollout.state}" + (f" -- {rollout.reason}" if rollout.reason else "")]
    if rollout.state not in DONE:
        elapsed = time.time() - rollout.step_started
        lines.append(f"step {rollout.step + 1} of {len(rollout.steps)} ({_steps(rollout.steps)}): "
                     f"{rollout.percent:g}% for {elapsed:.0f}s (at least {rollout.guards.min_seconds:g}s "
                     f"and {rollout.guards.min_requests} candidate requests)")
    if rollout.window:
        lines.append("this step: " + _describe(rollout.window["candidate"], rollout.window["stable"]))
    lines.append(f"controller: the agent of {rollout.controller}")
    lines.append("events:")
    lines += [f"  {time.strftime('%H:%M:%S', time.gmtime(e['time']))}Z {e['what']}" for e in rollout.events[-20:]]
    return lines
