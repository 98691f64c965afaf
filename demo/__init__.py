"""The demo of ``make run``: the server, an agent and a log generator that rotates (``python -m demo``)."""
