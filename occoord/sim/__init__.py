"""The OpenCode simulator: the server's HTTP API and event stream with scripted fake agents.

It imitates the server that ``occoord.opencode`` talks to and shares no code with that client.
"""
