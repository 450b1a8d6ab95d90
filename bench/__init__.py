"""Performance benchmark of the ModelRollout operator on the lab (issue 11).

``python -m bench.run`` (or ``make bench``) drives N ModelRollouts through a rollout, some of them
through an automatic rollback, against one operator process, and writes
``bench/results/latest.json`` and ``bench/results/latest.md``. See ``docs/performance.md``.

Modules: :mod:`bench.run` (the CLI and one benchmark round), :mod:`bench.labenv` (a lab of its
own, apart from the shared one), :mod:`bench.exporter` (one process exposing synthetic
``model_requests_total`` series for every rollout), :mod:`bench.watch` (timestamps of what the
bench sees: rollouts and routes), :mod:`bench.measure` (the figures, pure),
:mod:`bench.probes` (/proc, apiserver and operator metrics), :mod:`bench.profile` (py-spy).
"""
