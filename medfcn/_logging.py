"""Silence the third-party messages every medfcn command would print and no user can act on.

Each filter names one message of one library, so anything else those libraries say still shows:

* MONAI's ``LoadImage`` builds every registered reader, ``NvImgCodecPydicomReader`` included, which logs
  "nvImageCodec is not available" and warns that its plugin did not register (GPU JPEG decoding we do
  not use: pydicom's decoders read the series);
* MONAI's ``ConfigWorkflow(logging_file=False)`` warns "Logging file is set to False" although medfcn
  turns the bundle's logging.conf off on purpose (it would re-route the root logger to stdout);
* MLflow logs its SQLite schema setup ("Creating initial MLflow database tables...", "Updating database
  tables") at INFO on every run.

The ``Orientationd`` ``labels`` FutureWarning is not filtered: the bundles set ``labels`` explicitly.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_third_party"]

_DROPPED = {
    "monai.data.nvimgcodec_pydicom_plugin": ("nvImageCodec is not available",),
    "monai.bundle.workflows": ("Logging file is set to False",),
}
_QUIET_LOGGERS = ("mlflow.store.db.utils",)  # INFO: schema creation and migration of the SQLite store


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Install the filters above (idempotent; the CLI calls it once per command)."""
    warnings.filterwarnings(
        "ignore",
        message=r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
        category=UserWarning,
    )
    for name, prefixes in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
