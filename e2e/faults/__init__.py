"""Fault injection on the lab: operator kills, apiserver restarts, a misbehaving Prometheus,
write conflicts, hanging webhooks, two operator replicas, bad input. ``make faults`` runs it;
docs/reliability.md records the last run's counts."""
