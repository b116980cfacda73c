"""The read side: one module per read model, the engine that applies events with the
projection's checkpoint in one transaction, the JetStream worker, rebuild and lag.

Each read-model module (users, accounts, instruments, strategies, signals, orders, trades,
positions, daily_pnl) has a pure-ish ``apply(connection, event, meta)``: SQL for the events
it handles, nothing for the others. Its table names are unqualified; the engine sets the
search_path to the live schema ``read`` or to a rebuild's scratch schema.
"""
