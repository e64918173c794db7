"""The running job: the coordinator loop, attempts, dispatch, settling, hooks and the wiring.

Talks to OpenCode only through the client port (``ports``) and changes task state only through
the spool's ``transition()``.
"""
