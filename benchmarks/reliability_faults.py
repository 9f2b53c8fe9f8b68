"""Faults (issue #9): kill (SIGKILL) or freeze (SIGSTOP) the client, server or dealer at each
protocol step, between real processes with mTLS, and check what the others do.

Steps: ``handshake`` (the victim is signalled from outside: a server or dealer before the
client connects, a client once its TCP connection to the server is up), ``offline``, each
online layer and (server) ``output``, the output policy and reveal, by failpoint
(``protocols.faults``: the victim kills or freezes itself just before it sends the step's
first frame). ``run()`` covers every victim, action and step of ``digits-cnn`` under
``mpc`` that the tags allow (the dealer has no online step); the CI slice
(``tests/integration/test_faults.py``) runs a few cases on ``digits-mlp``. Processes:
``benchmarks.fault_lab``.

Per case, with a dealer and a server always up (restarted when they are the victim):
1. the fault; its instant is the victim's ``failpoint: ... fired at T`` line, or the
   signal (handshake: when the survivor starts connecting, after the signal);
2. each survivor that was in the session must report a clear error within
   ``DETECT_LIMIT_S``: the client by exception (in-process) or by exit status and message
   (the client CLI), the server by its ``session ... failed`` log line;
3. a frozen victim is resumed (SIGCONT) and must end its own session (a client: exit
   status 1); a killed server or dealer is restarted (the server's start sweeps what its
   predecessor left);
4. a following valid client session must give plaintext's prediction;
5. no material may be left in any store: the failed session's must be gone.

Row: {"class": "fault", "case": "<victim> <action> @ <step>", "cases": 1, "crashes": a
traceback in a surviving process or an unexpected exception type, "hangs": a survivor
that did not report within ``DETECT_LIMIT_S``, a resumed victim that did not end its
session, or the follow-up session timing out,
"reused_preprocessing": material of the failed session still on disk after recovery (so
available for reuse), "wrong_results": the follow-up session failed or disagreed with
plaintext, "detect_s": the slowest survivor's detection time (0 when no survivor was in a
session), "detail": what happened}.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field

from benchmarks.fault_lab import WAIT_S, Lab, Proc, Run, connected
from protocols.faults import ENV

MODEL = "digits-cnn"
DETECT_LIMIT_S = 5.0
LAYERS = {"digits-mlp": ("fc1", "act1", "fc2"),
          "digits-cnn": ("conv1", "act1", "conv2", "act2", "fc")}
EXPECTED = ("PeerError", "ConnectionError", "HandshakeError", "MaterialError")


def failpoint_prefix(victim: str, step: str) -> str | None:
    """The tag whose first frame the victim must not send (None: handshake, by signal)."""
    if step == "handshake":
        return None
    if step == "offline":
        return {"client": "dealer.request", "server": "const.", "dealer": "dealer.c"}[victim]
    if step == "output":
        return "output"
    return f"{step}.open"


def steps(model: str, victim: str) -> list[str]:
    if victim == "dealer":
        return ["handshake", "offline"]
    online = list(LAYERS[model]) + (["output"] if victim == "server" else [])
    return ["handshake", "offline"] + online


def _fault_time(proc: Proc, timeout: float):
    hit = proc.wait_line("failpoint:", timeout)
    return None if hit is None else float(hit[1].split(" fired at ")[1].split()[0])


@dataclass
class Outcome:
    """One case's findings; ``row()`` is the record."""

    case: str
    detect: dict = field(default_factory=dict)        # survivor -> seconds after the fault
    errors: dict = field(default_factory=dict)        # survivor -> its message
    missing: list = field(default_factory=list)       # survivors that never reported
    crashes: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)
    follow_up: str = ""                               # "ok" or what went wrong

    def row(self) -> dict:
        late = [k for k, v in self.detect.items() if v > DETECT_LIMIT_S]
        return {"class": "fault", "case": self.case, "cases": 1,
                "crashes": int(bool(self.crashes)),
                "hangs": int(bool(late or self.missing or self.follow_up.startswith("hang"))),
                "reused_preprocessing": int(bool(self.leftovers)),
                "wrong_results": int(self.follow_up != "ok" and
                                     not self.follow_up.startswith("hang")),
                "detect_s": round(max(self.detect.values(), default=0.0), 3),
                "detail": "; ".join([f"{k}: {v}" for k, v in self.errors.items()]
                                    + [f"missing: {m}" for m in self.missing]
                                    + [f"crash: {c}" for c in self.crashes]
                                    + [f"left on disk: {d}" for d in self.leftovers]
                                    + ([f"follow-up: {self.follow_up}"]
                                       if self.follow_up != "ok" else []))}


def _server_report(lab: Lab, out: Outcome, t_fault: float, required: bool,
                   sid: str | None = None) -> None:
    """The server's ``session <sid> failed`` line after the fault (required: else missing;
    not required: a session may not have begun, so wait only past the limit)."""
    hit = lab.server.wait_line(f"session {sid[:8]} failed: " if sid else " failed: ",
                               WAIT_S if required else DETECT_LIMIT_S + 1, since=t_fault - 0.5)
    if hit is not None:
        out.detect["server"] = round(hit[0] - t_fault, 3)
        out.errors["server"] = hit[1].split(" failed: ", 1)[1]
    elif required:
        out.missing.append("server")


def _client_report(out: Outcome, run: Run, t_fault: float) -> None:
    if isinstance(run.exc, TimeoutError):
        out.missing.append("client")
    elif run.exc is None:
        out.errors["client"] = f"session succeeded (predicted {run.pred})"
        out.detect["client"] = 0.0
    else:
        out.detect["client"] = round(run.t1 - t_fault, 3)
        out.errors["client"] = f"{type(run.exc).__name__}: {run.exc}"
        if type(run.exc).__name__ not in EXPECTED:
            out.crashes.append(f"client raised {type(run.exc).__name__}")


def _cli_survivor(lab: Lab, out: Outcome, victim: Proc) -> float:
    """A client CLI against a victim server or dealer: it must print ``error: ...`` and
    exit with status 1 within the limit. Returns the fault's instant."""
    cli = lab.client_cli()
    t_fault = _fault_time(victim, 90)
    if t_fault is None:
        out.errors["victim"] = "the fault never fired"
        out.missing.append("victim")
        cli.stop()
        return time.time()
    hit = cli.wait_line("error:", WAIT_S, since=t_fault - 0.5)
    try:
        code = cli.popen.wait(10)
    except subprocess.TimeoutExpired:
        code = None
        cli.stop()
    if hit is None or code is None:
        out.missing.append("client")
        out.errors["client"] = f"exit status {code}: {cli.output()[-500:]}"
    else:
        out.detect["client"] = round(hit[0] - t_fault, 3)
        out.errors["client"] = f"exit status {code}, {hit[1]}"
    if "Traceback" in cli.output() or code not in (1, None):
        out.crashes.append(f"client exited with status {code}")
    return t_fault


def _client_victim(lab: Lab, out: Outcome, sig, prefix: str | None, env) -> tuple[Proc, float]:
    """The client CLI is the victim; the server must report (at the handshake: if a session
    had begun). Returns the victim and the fault's instant."""
    victim = lab.client_cli(env)
    if prefix is None:                       # handshake: hit it once it has connected
        end = time.monotonic() + 60
        while not connected(victim.popen.pid, lab.server_port) and victim.alive() \
                and time.monotonic() < end:
            time.sleep(0.002)
        t_fault = time.time()
        victim.signal(sig)
    else:
        t_fault = _fault_time(victim, 90)
    if t_fault is None:
        out.errors["victim"] = "the fault never fired: " + victim.output()[-1000:]
        out.missing.append("victim")
        return victim, time.time()
    _server_report(lab, out, t_fault, required=prefix is not None)
    return victim, t_fault


def run_case(lab: Lab, victim: str, action: str, step: str, progress=None,
             client: str = "cli") -> Outcome:
    """One fault case (see the module docstring); leaves the lab ready for the next.
    ``client``: the survivor client of a server or dealer fault, as the ``python -m
    client`` process ("cli") or in-process (``client.api``, "api"); at the handshake
    always in-process (timed from its start)."""
    out = Outcome(f"{victim} {action} @ {step}")
    sig = signal.SIGKILL if action == "kill" else signal.SIGSTOP
    prefix = failpoint_prefix(victim, step)
    env = {ENV: f"{victim}:{prefix}:1:{action}"} if prefix else None
    lab.ensure()
    lab.clear_stores()
    if victim == "dealer" and env:
        lab.start_dealer(env)
    if victim == "server" and env:
        lab.start_server(env)
    t_start = time.time()
    if victim == "client":
        target, t_fault = _client_victim(lab, out, sig, prefix, env)
    else:
        target = lab.dealer if victim == "dealer" else lab.server
        if prefix is None:                       # handshake: signalled before the client
            target.signal(sig)
        if prefix is None or client == "api":
            run = lab.session(0)
            t_fault = run.t0 if prefix is None else (_fault_time(target, 3) or run.t0)
            _client_report(out, run, t_fault)
            sid = run.sid
        else:
            t_fault, sid = _cli_survivor(lab, out, target), None
        if victim == "dealer" and (prefix is not None or sid is not None):
            _server_report(lab, out, t_fault, required=True, sid=sid)
    # recovery: a frozen victim is resumed and must end its own session; a dead server or
    # dealer is restarted (the server's start sweeps what its predecessor left)
    if action == "stop":
        target.signal(signal.SIGCONT)
        if victim == "server" and prefix is not None and \
                target.wait_line(" failed: ", WAIT_S, since=t_fault) is None:
            out.missing.append("resumed server")
    if victim == "client":
        try:
            target.popen.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            out.missing.append("resumed client")
            target.stop()
        if action == "stop" and prefix and target.popen.returncode == 0:
            out.crashes.append("resumed client exited 0 after its peer vanished")
    lab.ensure()
    out.follow_up = lab.follow_up()
    for p in (lab.server, lab.dealer) + ((target,) if action == "stop" else ()):
        if p is not None and "Traceback" in p.output(since=t_start):
            out.crashes.append(f"traceback in {p.name}")
    out.leftovers = lab.leftovers()
    if progress is not None:
        progress(out.row())
    lab.clear_stores()
    return out


def run(progress=print, model: str = MODEL) -> list[dict]:
    """Every (victim, action, step) case on ``model`` under mpc; one row each."""
    rows = []
    with Lab(model) as lab:
        for victim in ("client", "server", "dealer"):
            for action in ("kill", "stop"):
                for step in steps(model, victim):
                    try:
                        rows.append(run_case(lab, victim, action, step, progress).row())
                    except Exception as exc:  # noqa: BLE001 - the harness failed: say so
                        out = Outcome(f"{victim} {action} @ {step}", follow_up="not run")
                        out.crashes.append(f"harness: {type(exc).__name__}: {exc}")
                        rows.append(out.row())
                        lab.stop()                 # the next case starts both afresh
    return rows


if __name__ == "__main__":     # python -m benchmarks.reliability_faults: rows as JSON lines
    import json
    run(progress=lambda r: print(json.dumps(r), flush=True))
