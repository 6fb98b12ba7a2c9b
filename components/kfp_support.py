"""Building KFP components from the suite's wrapper functions, with the image chosen at compile time.

Wrappers (``<stage>/component.py``) are plain functions with KFP type annotations; ``component_op`` turns one
into a lightweight component that runs in the suite's own image. The image already holds kfops and kfp, so
no package is installed at run time (``install_kfp_package=False``).
"""

from __future__ import annotations

from kfops import __version__

DEFAULT_IMAGE = f"ghcr.io/kfops/kfops:{__version__}"
DEFAULT_CUDA_IMAGE = f"ghcr.io/kfops/kfops-cuda:{__version__}"


def component_op(func, image: str = DEFAULT_IMAGE):
    """A KFP component of ``func`` running in ``image``."""
    from kfp import dsl

    return dsl.component(func=func, base_image=image, install_kfp_package=False)
