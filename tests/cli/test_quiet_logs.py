"""What a command prints besides its own lines: no third-party noise, no redrawn bars in a log file
(issue 17, item 9). The end-to-end check, a real process with stderr to a pipe, is tests/cli/test_demo.py."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

from medfcn._logging import quiet_third_party
from medfcn._progress import LineProgress, progress

REPO = Path(__file__).resolve().parents[2]
NOISE = (
    "nvImageCodec",
    "labels=(('L', 'R')",
    "FutureWarning",
    "Logging file is set to",
    "Creating initial MLflow database tables",
    "Updating database tables",
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_each_step_is_one_line() -> None:
    stream = io.StringIO()
    for _ in progress(range(3), desc="evaluating", unit="case", lines="each", file=stream):
        pass
    assert stream.getvalue().splitlines() == [f"evaluating: {i}/3 case" for i in (1, 2, 3)]
    assert "\r" not in stream.getvalue()


def test_without_a_terminal_a_loop_of_batches_is_one_line() -> None:
    stream = io.StringIO()
    with progress(total=40, desc="epoch 2/5", unit="batch", lines="end", file=stream) as bar:
        for _ in range(40):
            bar.update(1)
            bar.set_postfix_str("loss 0.1234")
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("epoch 2/5: 40/40 batch, loss 0.1234 (") and line.endswith(" s)")


def test_disabled_progress_prints_only_what_is_written() -> None:
    stream = io.StringIO()
    bar = progress(total=2, desc="segmenting", unit="case", enabled=False, file=stream)
    bar.update(1)
    bar.write("case1: ok in 1.0 s")
    bar.close()
    assert stream.getvalue() == "case1: ok in 1.0 s\n"


def test_on_a_terminal_it_is_a_tqdm_bar() -> None:
    from tqdm import tqdm

    bar = progress(total=2, desc="x", unit="case", file=_Terminal())
    try:
        assert isinstance(bar, tqdm) and not isinstance(bar, LineProgress)
    finally:
        bar.close()


def test_every_bundle_sets_orientation_labels() -> None:
    """MONAI 1.5+ warns (FutureWarning) when ``Orientationd`` relies on the default ``labels``."""
    found = 0
    for config in sorted(REPO.glob("bundles/*/configs/*.json")):
        text = config.read_text(encoding="utf-8")
        if '"Orientationd"' not in text:
            continue

        def walk(node: object, config: Path = config) -> None:
            nonlocal found
            if isinstance(node, dict):
                if node.get("_target_") == "Orientationd":
                    found += 1
                    assert "labels" in node, f"{config.relative_to(REPO)}: Orientationd without labels"
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(json.loads(text))
    assert found >= 1


def test_bundle_preprocessing_builds_without_warnings() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles/liver/configs/inference.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser.get_parsed_content("preprocessing", instantiate=True)
    assert not [w for w in caught if "Orientation" in str(w.message)], [str(w.message) for w in caught]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_monai_workflow_and_mlflow_store_setup_are_quiet(tmp_path: Path) -> None:
    """Records are caught on the loggers themselves (MONAI's handler writes to the stdout it found at
    import, which no capture fixture sees); the filters act before any handler."""
    from mlflow.tracking import MlflowClient
    from monai.bundle import ConfigWorkflow

    quiet_third_party()
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("monai.bundle.workflows", "mlflow")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        ConfigWorkflow(
            config_file=str(REPO / "bundles/liver/configs/train.json"),
            meta_file=str(REPO / "bundles/liver/configs/metadata.json"),
            logging_file=False,
            workflow_type="train",
        )
        MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
        assert (tmp_path / "mlflow.db").is_file()  # the store was created: the setup ran
        assert not [m for m in records.messages if any(n in m for n in NOISE)], records.messages
        loggers[0].warning("something else")  # other messages still pass
        logging.getLogger("mlflow.store.db.utils").warning("a real problem")
        assert records.messages[-2:] == ["something else", "a real problem"]
    finally:
        for logger in loggers:
            logger.removeHandler(records)
