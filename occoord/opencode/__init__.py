"""The OpenCode client side: HTTP client, event stream, turn outcomes, permission policy and the
server process. It knows nothing of the spool; the engine drives it through its client port.
"""
