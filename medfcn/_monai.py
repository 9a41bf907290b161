"""Import the parts of MONAI that running a bundle needs, without MONAI's package face.

``import monai.transforms`` runs ``monai/__init__.py`` first, and that imports every MONAI submodule
(``load_submodules``): the handlers and with them MLflow, the FL and Auto3DSeg apps, the pathology losses.
And ``monai.utils``, which every part imports, imports MONAI's optional dependencies at once: PyTorch-Ignite
(with ``torch.distributed.tensor`` and sympy), pandas and matplotlib, which inference never calls.
:func:`light_monai` puts a lazy stand-in for the package in ``sys.modules``, hides those three optional
dependencies from MONAI while it imports the parts a bundle's inference ids name (transforms, inferers,
networks, data, the config parser), and makes them importable again afterwards. MONAI supports running
without them (they are optional extras of MONAI): it binds a stub that raises when used. Any other part
of MONAI is imported when first used (``monai.handlers`` as an attribute or an import works as usual).
Measured on the 2-core development machine (CPU seconds, torch included): 4.0 s to import the parts with
the optional dependencies, 2.3 s without; a one-case ``medfcn infer`` spent 5.1 s of CPU before its first
case through the face.

It only acts when MONAI is not imported yet (a fresh ``medfcn infer`` process); anywhere else it does
nothing. The stand-in keeps what the face provides that medfcn or a bundle's ``$`` expressions read:
``__version__`` and the submodules as attributes. Bare ``_target_`` names resolve among the parts
imported here, which are the ones an inference config uses (``LoadImaged``, ``SlidingWindowInferer``,
``UNet`` ...); a config naming a class of another part by its bare name needs the full face, so
``medfcn train`` and ``medfcn evaluate`` do not use this.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
import warnings
from typing import Any

__all__ = ["HIDDEN", "INFERENCE_PARTS", "light_monai"]

HIDDEN = ("ignite", "pandas", "matplotlib", "scipy.signal")
"""MONAI's optional dependencies that no inference step uses (engines and handlers, CSV and profiling,
plots; ``scipy.signal``, with ``scipy.stats`` behind it, only for the ultrasound confidence map and the 1-D
signal transforms: 1.2 s of a fresh ``medfcn infer`` on an AVX2 AMD EPYC), hidden from MONAI while
:func:`light_monai` imports it."""

INFERENCE_PARTS = (
    "monai.apps",  # first: MONAI's modules import each other in the order its face loads them
    "monai.data",
    "monai.transforms",
    "monai.inferers",
    "monai.networks.nets",
    "monai.bundle.config_parser",
)
"""The MONAI parts a bundle's ``preprocessing``, ``network_def``, ``inferer`` and ``postprocessing`` use."""


def light_monai(parts: tuple[str, ...] = INFERENCE_PARTS) -> bool:
    """Import ``parts`` of MONAI behind a lazy package stand-in, unless MONAI is imported already.

    ``MEDFCN_FULL_MONAI=1`` turns it off (a bundle whose inference config names, by a bare ``_target_``,
    a class of a MONAI part not imported here). If importing the parts fails, MONAI is left to import the
    usual way and the caller goes on with the full face.

    Returns:
        Whether the stand-in was installed (``False``: MONAI was imported before, the stand-in is turned
        off, or importing the parts failed; then nothing changed).
    """
    if "monai" in sys.modules or os.environ.get("MEDFCN_FULL_MONAI", "").strip() not in ("", "0"):
        return False
    spec = importlib.util.find_spec("monai")
    if spec is None or spec.submodule_search_locations is None:  # not installed: let the real import fail
        return False
    face = types.ModuleType("monai", "MONAI, imported part by part by medfcn (see medfcn._monai).")
    face.__path__ = list(spec.submodule_search_locations)
    face.__file__ = spec.origin
    face.__spec__ = spec

    def __getattr__(name: str) -> Any:  # PEP 562: `monai.handlers` imports the part on first use
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"monai.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'monai' has no attribute {name!r}") from None

    face.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["monai"] = face
    # the warning MONAI's face hides: ignite's checkpoint module warns on import about a torch API
    warnings.filterwarnings("ignore", module=r"ignite\.handlers\.checkpoint")
    hidden = [name for name in HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError meanwhile
    try:
        # the face's own source of its version (versioneer): it needs no installed package metadata
        versions = importlib.import_module("monai._version").get_versions()
        face.__version__ = str(versions.get("version") or "0+unknown")  # type: ignore[attr-defined]
        for part in parts:
            importlib.import_module(part)
    except Exception as err:  # a MONAI version this does not fit: the usual import still works
        for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")]:
            del sys.modules[name]  # leave MONAI importable the usual way
        logging.getLogger(__name__).debug("importing MONAI part by part failed (%s): the full face", err)
        return False
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]  # importable again, for whatever else the process does
    return True
