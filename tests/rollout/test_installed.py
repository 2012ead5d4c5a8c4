"""A plain `pip install .` carries the rollout package: `aedgate rollout` works from the
installed copy (the command module is in host_tools.commands, its library in host_tools.rollout)."""
from tests.integration.test_install import installed, run  # noqa: F401  (the fixture)


def test_installed_rollout_command_reaches_its_library(installed, tmp_path):  # noqa: F811
    r = run(installed, tmp_path, "-m", "host_tools.cli", "rollout", "status", "--db", "missing.db")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "aedgate: error: missing.db does not exist (start a rollout with it first)"
    r = run(installed, tmp_path, "-c", "import host_tools.rollout as r; print(r.__file__)")
    assert r.returncode == 0 and r.stdout.strip().startswith(str(installed)), r.stdout + r.stderr
