"""The GGUF conversion, run as a child process: ``python -m chatcore.generation.convert``.

A child process can be killed at once when the user presses Ctrl-C or the backend closes; a
conversion in a worker thread would hold the interpreter's exit until it finished (25–40 s).
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chatcore.generation.model_cache import CONVERTER_MODULE
from chatcore.generation.model_files import ModelLocation, quiet_progress
from chatcore.generation.types import GenerationError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_PARENT_POLL_SECONDS = 0.5


def write_converted(location: ModelLocation, out: Path) -> None:
    """Convert the GGUF model at ``location`` into a transformers folder ``out`` (may exist)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(location.folder), location.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:
        raise GenerationError(
            f"cannot read the GGUF model {location}: {type(error).__name__}: {error}"
        ) from error
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    plain.eval()
    check_same_outputs(loaded, plain, location)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_same_outputs(reference: PreTrainedModel, copied: PreTrainedModel, where: object) -> None:
    """Refuse to cache a conversion whose logits differ (e.g. tied embeddings lost)."""
    import torch

    probe = torch.arange(1, 17, dtype=torch.long).unsqueeze(0) % reference.config.vocab_size
    with torch.inference_mode():
        expected = reference(input_ids=probe).logits
        actual = copied(input_ids=probe).logits
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise GenerationError(
            f"converting {where} changed the model's outputs (max logit difference {diff:g}); "
            "the cache was not written. Please report this with the model file's name."
        )


def _exit_with_parent(parent: int) -> None:
    """End this process when its parent is gone (killed, crashed): nobody waits for the result."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(3)

    threading.Thread(target=watch, name="chatcore-convert-parent", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Convert; on failure the last line of standard error says what failed."""
    parser = argparse.ArgumentParser(prog=f"python -m {CONVERTER_MODULE}", description=__doc__)
    parser.add_argument("gguf", type=Path, help="the GGUF file to convert")
    parser.add_argument("out", type=Path, help="the folder to write (created if missing)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process ends")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the cache is private: folders 0700, files 0600
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    try:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        with quiet_progress():
            write_converted(ModelLocation(args.gguf.parent, args.gguf.name), args.out)
    except GenerationError as error:
        return _fail(str(error))
    except Exception as error:
        return _fail(f"cannot convert {args.gguf}: {type(error).__name__}: {error}")
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as the last line of standard error (the parent reports that line)."""
    print("error: " + " ".join(message.splitlines()), file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # the files are written and closed: skip freeing the model (about 1 s)
