"""``ledger demo``: the whole system on one machine in one process, for a first look.

The daemon on a temporary SQLite database, the OpenRouter and Notion simulators, four example
behaviors on a seconds-long schedule with demo-only policy thresholds, an alert receiver and a
read-only view of the Notion simulator's rows. ``stage`` writes the demo's folder (pure
functions and the files), ``receiver`` is the small web app that shows alerts and Notion rows,
``run`` starts and stops everything. An edge like the CLI: it wires the daemon, never the
other way round.
"""
