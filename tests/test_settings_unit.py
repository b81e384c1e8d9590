"""Pure logic: settings declared once as traits, the flags and config made from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from IPython.core.magic_arguments import magic_arguments, parse_argstring
from traitlets import Integer
from traitlets.config import Config, Configurable

from dtrain_magics.config.flags import setting_arguments, settings_from_args
from dtrain_magics.config.options import RunOptions, parse_names
from dtrain_magics.config.settings import DistributedSettings
from dtrain_magics.config.store import SettingsStore, load_file, save_file
from dtrain_magics.config.traits import setting
from dtrain_magics.errors import BadOptions, SettingError


def test_defaults() -> None:
    options = RunOptions.from_settings(DistributedSettings())
    assert (options.nodes, options.procs_per_node, options.backend, options.device) == (
        1,
        1,
        "horovod",
        "auto",
    )
    assert options.timeout is None and options.layout.ranks == 1


def test_layout_multiplies_nodes_and_procs() -> None:
    assert RunOptions(nodes=3, procs_per_node=2).layout.ranks == 6


@pytest.mark.parametrize("nodes", [0, -3, True, 2.5, "2", 5000])
def test_invalid_nodes_are_one_sentence_naming_flag_and_label(nodes: object) -> None:
    with pytest.raises(SettingError) as info:
        DistributedSettings(nodes=nodes)
    assert str(info.value).startswith("--nodes must be a positive integer up to 1024, got ")
    assert info.value.for_form().startswith("Nodes must be a positive integer")


def test_ranks_over_the_limit_are_refused_together() -> None:
    with pytest.raises(SettingError, match=r"--nodes 600 × --procs-per-node 2 asks for 1200"):
        DistributedSettings(nodes=600, procs_per_node=2).check()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "mxnet"}, "--backend must be one of horovod, torch, got 'mxnet'."),
        ({"timeout": -1}, "--timeout must be a positive number of seconds, got -1."),
        ({"env": {"A B": "1"}}, "--env takes NAME=VALUE, and 'A B' is not a variable name."),
        ({"launcher": "k8s"}, "--launcher must be one of local, mpi, slurm, profile, got 'k8s'."),
    ],
)
def test_each_trait_validates_itself(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingError) as info:
        DistributedSettings(**values)
    assert str(info.value) == message


def test_parse_names() -> None:
    assert parse_names(" a, b ,,c ", "--push") == ("a", "b", "c")
    assert parse_names(None, "--push") == ()
    with pytest.raises(BadOptions, match="--pull names x twice"):
        parse_names("x,y,x", "--pull")
    with pytest.raises(BadOptions, match="'1x' is not one"):
        parse_names("1x", "--push")


class WithSeed(DistributedSettings):
    """A settings class with one setting more, as a contributor would add it."""

    seed = setting(Integer(0, help="Random seed of every rank."), label="Seed")


def test_adding_a_setting_is_adding_one_trait() -> None:
    from dtrain_magics.ui.config_form import ConfigPanel

    @magic_arguments()
    @setting_arguments(WithSeed)
    def magic(line: str) -> None:
        """A magic taking every setting."""

    assert "--seed SEED" in magic.__doc__ and "Random seed of every rank." in magic.__doc__
    flags = settings_from_args(parse_argstring(magic, "--seed 7 --nodes 2"), WithSeed)
    assert flags == {"seed": 7, "nodes": 2}
    store = SettingsStore(settings_class=WithSeed)
    settings, sources = store.resolve(flags)
    assert settings.seed == 7 and sources["seed"] == "flag"
    assert settings.magic_line() == "%%distributed --nodes 2 --seed 7"

    class FakeCluster:
        layout = None

        def add_listener(self, listener: Any) -> None:
            pass

        def status(self) -> dict[str, Any]:
            return {"launcher": "local", "state": "stopped"}

    panel = ConfigPanel(store, FakeCluster())  # type: ignore[arg-type]
    assert "seed" in panel.fields
    label = panel.rows["seed"].children[0].value
    assert label == "Seed"
    panel.fields["seed"].value = "11"
    assert panel.values()[0]["seed"] == 11 and panel.magic_line.endswith("--seed 11")


def test_flags_are_grouped_by_launcher() -> None:
    @magic_arguments()
    @setting_arguments(DistributedSettings)
    def magic(line: str) -> None:
        """Every setting."""

    doc = magic.__doc__
    help_of = doc[doc.index("options:") :]  # after the usage line
    at = help_of.index
    assert at("--nodes") < at("launcher mpi:") < at("--hostfile") < at("launcher slurm:")
    assert at("launcher slurm:") < at("--partition") < at("launcher profile:") < at("--profile")


def test_ipython_config_is_the_lowest_layer(tmp_path: Path) -> None:
    shell = Configurable(config=Config({"DistributedSettings": {"nodes": 3, "backend": "torch"}}))
    store = SettingsStore(parent=shell)
    settings, sources = store.resolve({})
    assert (settings.nodes, settings.backend) == (3, "torch")
    assert sources == {"nodes": "IPython config", "backend": "IPython config"}
    store.file_values = load_file(save_file({"nodes": 4}, tmp_path / "c.json"))
    settings, sources = store.resolve({"backend": "horovod"})
    assert (settings.nodes, settings.backend) == (4, "horovod")
    assert sources == {"nodes": "config file", "backend": "flag"}
    assert settings.parent is store.parent  # a real Configurable under the shell


def test_the_same_flags_over_the_same_layers_reuse_their_settings(tmp_path: Path) -> None:
    shell = Configurable(config=Config({"DistributedSettings": {"backend": "torch"}}))
    store = SettingsStore(parent=shell)
    first, sources = store.resolve({"nodes": 2})
    again, sources_again = store.resolve({"nodes": 2})
    assert again is first and sources_again == sources
    assert store.resolve({"nodes": 3})[0].nodes == 3
    store.apply({"backend": "horovod"})  # the form
    assert store.resolve({"nodes": 2})[0].backend == "horovod"
    store.file_values = load_file(save_file({"procs_per_node": 2}, tmp_path / "c.json"))
    assert store.resolve({"nodes": 2})[0].procs_per_node == 2
    shell.config = Config({"DistributedSettings": {"nodes": 4}})  # %config in the notebook
    store.reset()
    settings, sources = store.resolve({})
    assert (settings.nodes, settings.backend) == (4, "horovod")
    assert sources["nodes"] == "IPython config"


def test_a_cells_cluster_flags_change_only_what_they_name() -> None:
    from dtrain_magics.cluster.launchers import LaunchSpec, Layout
    from dtrain_magics.ipython.cluster_choice import described, running_except

    ran, ran_spec = Layout(2, 1), LaunchSpec("mpi", (("hostfile", "/a"),), (("A", "1"),))
    # the flags over the defaults, whose launcher is local: --env alone
    asked = DistributedSettings(env={"B": "2"})
    assert running_except(ran, ran_spec, {"env"}, asked) == (
        Layout(2, 1),
        LaunchSpec("mpi", (("hostfile", "/a"),), (("B", "2"),)),
    )
    # an option of the running launcher, without --launcher
    asked = DistributedSettings(procs_per_node=2, hostfile="/b")
    assert running_except(ran, ran_spec, {"procs_per_node", "hostfile"}, asked) == (
        Layout(2, 2),
        LaunchSpec("mpi", (("hostfile", "/b"),), (("A", "1"),)),
    )
    # another launcher: its own settings and layout, the running environment
    asked = DistributedSettings(launcher="local")
    assert running_except(ran, ran_spec, {"launcher"}, asked) == (
        Layout(1, 1),
        LaunchSpec("local", (), (("A", "1"),)),
    )
    with pytest.raises(BadOptions, match="make 2048 ranks; at most 1024 are supported"):
        running_except(
            Layout(32, 1), LaunchSpec(), {"procs_per_node"}, DistributedSettings(procs_per_node=64)
        )
    assert described(ran, ran_spec) == "2 ranks (2 nodes × 1 proc), mpi launcher, --env A"


def test_the_start_timeout_is_a_setting_with_a_flag_and_a_field() -> None:
    @magic_arguments()
    @setting_arguments(DistributedSettings)
    def magic(line: str) -> None:
        """Every setting."""

    assert DistributedSettings().start_timeout == 120.0
    flags = settings_from_args(parse_argstring(magic, "--start-timeout 300"), DistributedSettings)
    assert flags == {"start_timeout": 300.0}
    with pytest.raises(SettingError) as info:
        DistributedSettings(start_timeout=0)
    assert str(info.value) == "--start-timeout must be a positive number of seconds, got 0."
    assert info.value.for_form().startswith("Start timeout (s) must be a positive number")
    assert "start_timeout" not in DistributedSettings.cluster_settings()  # no restart for it
