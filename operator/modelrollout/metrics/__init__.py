"""Analysis: metric providers and the checks run against them.

- ``base``: the provider interface and its typed outcomes (Value / Samples / Vector, NoData,
  ProviderError).
- ``prometheus``: PrometheusProvider (bounded async calls on httpx, shared fairly per
  namespace) and the factory that caches providers per address and credentials.
- ``results``: Prometheus' query results as typed outcomes.
- ``templates``: built-in PromQL and ``{{ variable }}`` rendering with escaping.
- ``statistics``: Mann-Whitney U p-values, relative change, PSI.
- ``verdicts``: pure outcome -> verdict functions.
- ``analysis``: QueryContext and ``run_checks``, the reconciler's entry point.
"""
