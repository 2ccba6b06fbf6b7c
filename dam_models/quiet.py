"""Library chatter that is not the user's business: weight-loading progress bars, advice, tracing notes.

`dam search`, `dam dev` and every run load models; transformers would print a progress bar per
load and advice about training settings, and a conversion (done once per model) would print
PyTorch's tracing warnings about the graph it is exporting, which the parity tests check instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    """No progress bars, no advice below errors, no deprecation notes from transformers' own loading."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


@contextlib.contextmanager
def quiet_conversion() -> Iterator[None]:
    """Warnings raised while a model is traced for export are silenced for the export's duration."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
