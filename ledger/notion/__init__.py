"""The Notion mirror: the three databases (``schema``), rows rendered from the database
(``render``), the idempotent mirror and its feeder (``mirror``), approving from Notion
(``approvals``), actions, the event log and the comment alert channel (``deliver``), all on one
client and one rate limiter (``api``, ``limiter``)."""
