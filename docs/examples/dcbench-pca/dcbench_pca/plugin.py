"""Hooks: tell dcbench what this package provides. Keep this module light (no heavy imports):
dcbench imports it for `dcbench list`; the method itself is loaded lazily from its target."""

import dcbench


@dcbench.hookimpl
def register_methods(register):
    register("pca-split", "dcbench_pca.method:PCASplit",
             description="PCA: leading components as content, the next ones as transformation")
