"""The command side: msgspec command messages and their handlers (load, decide, append).

One module per area, each with its command Structs (the edge form of the domain's
commands, see ``edge``) and one handler per command: ``users``, ``accounts``,
``instruments``, ``strategies``, ``signals``, ``orders``. What they share is in
``runtime`` (Ledger, Repository, retry, idempotency) and ``reads`` (merged loads);
``bootstrap`` wires a Ledger on a pool and maps each command type to its handler.
"""
