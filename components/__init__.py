"""Thin KFP components, one per ftpipe step.

Each component unpacks its KFP inputs, calls ``ftpipe.steps.<step>.run`` through ``ftpipe.task``
and writes KFP outputs. The work lives in the ``ftpipe`` package, installed in the component image
together with the pinned ``kfp``; so the components set ``install_kfp_package=False``, which spares
every task a ``pip install kfp`` at start-up (and the network access it needs).
"""

from __future__ import annotations

import copy

from ftpipe import __version__

DEFAULT_IMAGE = f"ftpipe:{__version__}"


def with_image(component, image: str):
    """A copy of ``component`` that runs in ``image`` (the image tag is chosen at compile time)."""
    component = copy.deepcopy(component)
    component.component_spec.implementation.container.image = image
    return component
