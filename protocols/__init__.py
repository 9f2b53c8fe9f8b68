"""Contracts at the bottom (channel, metering, ops, config, store, wire, session) and the
protocol families on top (``protocols.families``, named in ``protocols.registry``)."""
