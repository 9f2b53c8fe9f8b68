"""MPC-friendly nonlinear functions written once against ``protocols.ops.Ops`` (arrive
with the nonlinear issue)."""
