"""Faults (issue #9): the failpoint itself, and a CI slice of the fault matrix
(``benchmarks.reliability_faults``) on digits-mlp under mpc between real processes.

Each case kills (SIGKILL) or freezes (SIGSTOP) one process at one step; every survivor
in the session must report a clear error within 5 s of the fault, the failed session's
material must be gone from every store, and a following client session must get
plaintext's prediction from the same (or, after a kill, the restarted) server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from benchmarks import reliability_faults as rf
from benchmarks.fault_lab import Lab, Proc
from benchmarks.launch import REPO
from protocols import faults

MODEL = "digits-mlp"
# what a clear error says happened to the peer (the link name alone does not count)
CLEAR = re.compile(r"unreachable or gone|cannot reach|did not answer in time|closed the stream|"
                   r"cancelled the stream or vanished|frozen or too slow|peer aborted")


# -- the failpoint -------------------------------------------------------------------------------

@pytest.mark.parametrize("value,problem", [
    ("client:fc1.open:1", "expected <party>:<tag-prefix>:<n>:<action>"),
    ("client:fc1.open:1:kill:extra", "expected <party>"),
    ("auditor:fc1.open:1:kill", "party 'auditor'"),
    ("client::1:kill", "empty tag prefix"),
    ("client:fc1.open:0:kill", "n='0'"),
    ("client:fc1.open:x:kill", "n='x'"),
    ("client:fc1.open:1:explode", "action 'explode'"),
])
def test_malformed_failpoint_is_refused_naming_the_problem(monkeypatch, value, problem):
    with pytest.raises(faults.FailpointError, match=re.escape(problem)):
        faults.parse(value)
    monkeypatch.setenv(faults.ENV, value)
    faults.reset()
    try:
        with pytest.raises(faults.FailpointError, match=re.escape(problem)):
            faults.on_send("client", "anything")
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()


def test_failpoint_of_another_party_or_tag_does_not_fire(monkeypatch):
    monkeypatch.setenv(faults.ENV, "server:fc1.open:1:kill")
    faults.reset()
    try:
        for _ in range(3):
            faults.on_send("client", "fc1.open")      # another party
            faults.on_send("server", "fc2.open")      # another tag
    finally:
        monkeypatch.delenv(faults.ENV)
        faults.reset()


FIRE = """
import sys, torch
from protocols.channel import memory_pair
from protocols.metering import Meter
a, b = memory_pair((Meter("client"), Meter("server")))
for i, tag in enumerate(["x.open", "fc1.trunc", "fc1.open", "fc1.open", "fc1.open"]):
    print("sending", i, tag, flush=True)
    a.send(tag, torch.zeros(2, dtype=torch.int64))
print("all sent", flush=True)
"""


@pytest.mark.parametrize("action", ["kill", "stop"])
def test_failpoint_fires_before_the_nth_matching_frame(action):
    """client:fc1.open:2 -> the process dies (or stops) as it is about to send the
    second fc1.open frame: frames 0-2 went out, frame 3 did not."""
    env = {**os.environ, faults.ENV: f"client:fc1.open:2:{action}"}
    proc = subprocess.Popen([sys.executable, "-c", FIRE], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if action == "stop":
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
            os.set_blocking(proc.stdout.fileno(), False)
            before = proc.stdout.read()              # what it printed before it froze
            os.set_blocking(proc.stdout.fileno(), True)
            os.kill(proc.pid, signal.SIGCONT)        # resumed, it carries on where it stopped
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if action == "stop":
        out = before
    sent = [line for line in out.splitlines() if line.startswith("sending")]
    assert sent[-1] == "sending 3 fc1.open" and "all sent" not in out
    assert re.search(rf"failpoint: client:fc1.open:2:{action} fired at \d+\.\d+", err)
    assert proc.returncode == (-signal.SIGKILL if action == "kill" else 0)


# -- the CI slice of the matrix ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(MODEL, tmp_path_factory.mktemp("faults")) as lab:
        yield lab


CASES = [  # victim, action, step, survivor client, the survivors that must report
    ("client", "kill", "offline", "-", {"server"}),
    ("client", "kill", "fc2", "-", {"server"}),
    ("server", "kill", "act1", "cli", {"client"}),
    ("server", "stop", "act1", "api", {"client"}),
    ("dealer", "kill", "offline", "cli", {"client", "server"}),
    ("server", "stop", "handshake", "api", {"client"}),
]


@pytest.mark.parametrize("victim,action,step,client,survivors", CASES,
                         ids=[f"{v}-{a}-{s}" for v, a, s, _, _ in CASES])
def test_fault_detected_within_5s_material_deleted_server_keeps_serving(
        lab, victim, action, step, client, survivors):
    out = rf.run_case(lab, victim, action, step, client=client if client != "-" else "cli")
    print(out.row())
    assert not out.missing, f"never reported: {out.missing} ({out.errors})"
    assert set(out.detect) == survivors, out.errors
    for who, seconds in out.detect.items():
        assert seconds < rf.DETECT_LIMIT_S, f"{who} took {seconds} s: {out.errors[who]}"
        assert CLEAR.search(out.errors[who]), f"{who}'s error names no peer: {out.errors[who]}"
    if "client" in survivors and client == "cli":
        assert out.errors["client"].startswith("exit status 1, error: ")
    assert out.crashes == []
    assert out.leftovers == [], "material of the failed session left on disk"
    assert out.follow_up == "ok"
    row = out.row()
    assert (row["crashes"], row["hangs"], row["reused_preprocessing"],
            row["wrong_results"]) == (0, 0, 0, 0)


def test_store_quota_fails_the_session_clearly_and_deletes_its_material(lab):
    """A server with --store-quota 20K cannot hold a digits-mlp session's material (over
    25 KB): the client is told why, naming the quota and the size, nothing is left on
    disk, and the server goes on serving. A bad size is refused at start."""
    bad = Proc("server", [sys.executable, "-m", "server", "--model", MODEL,
                          "--store-quota", "lots", "--insecure"])
    assert bad.popen.wait(60) == 2
    assert "--store-quota: size 'lots': expected a number of bytes" in bad.output()
    lab.start_server(extra=["--store-quota", "20K"])
    try:
        run = lab.session(0)
        assert type(run.exc).__name__ == "PeerError"
        assert re.search(r"store quota exceeded: writing \d+ bytes .* over its quota of 20480 "
                         r"bytes \(--store-quota\)", str(run.exc)), run.exc
        assert lab.leftovers() == []
    finally:
        lab.start_server()
    assert lab.follow_up() == "ok"
