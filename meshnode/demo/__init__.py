"""The one-command demo: a research mesh of five agents in five processes.

``meshnode demo`` starts a research orchestrator, a data agent, a code agent, a writer agent
and a web-search agent, each a separate ``meshnode run`` process on 127.0.0.1 with its own
data directory, sharing nothing but the seed address. The orchestrator splits a question
into subtasks, finds the specialists by describing what it needs, delegates, checks what
comes back and merges it into a Markdown report.

Modules: :mod:`~meshnode.demo.agents` (the specialists), :mod:`~meshnode.demo.orchestrator`,
:mod:`~meshnode.demo.planner` (reads the question against the table's columns and values),
:mod:`~meshnode.demo.runner` (starts and stops the processes), :mod:`~meshnode.demo.live`
(the terminal view), :mod:`~meshnode.demo.guards` (path and URL checks),
:mod:`~meshnode.demo.sandbox` (the code agent's limited runs), :mod:`~meshnode.demo.stats`,
:mod:`~meshnode.demo.search` and :mod:`~meshnode.demo.writer`. ``data/`` holds the demo's
made-up startup table and the offline search corpus; ``--csv`` gives it any other table.
"""

from __future__ import annotations
