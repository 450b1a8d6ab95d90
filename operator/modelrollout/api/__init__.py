"""The ModelRollout API (modelrollout.dev/v1alpha1).

- :mod:`.models`: pydantic models of spec and status, the single source of truth;
- :mod:`.crd`: the CustomResourceDefinition generated from them (``python -m
  modelrollout.api.crd [--no-cel]``, committed as ``crds/modelrollout.yaml``);
- :mod:`.validation`: strict parsing with wire-path messages and the cross-field rules.

No kopf and no HTTP in here.
"""
