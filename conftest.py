# The lab fixtures (a real apiserver, Prometheus and the simulated data plane) for every test tree.
pytest_plugins = ["e2e.lab.pytest_plugin"]
