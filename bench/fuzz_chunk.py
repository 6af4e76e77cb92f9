"""Coverage-guided fuzzing of the chunk decoder with atheris, as a bounded run.

Usage (from the repository root; ``pip install atheris`` first)::

    python bench/fuzz_chunk.py                    # 200,000 inputs, then stops
    python bench/fuzz_chunk.py -runs=2000000      # longer
    python bench/fuzz_chunk.py -max_total_time=600

The golden chunks of ``tests/golden/`` seed the corpus, so mutations start from
valid documents. An input fails the run when decoding it raises anything but
ChunkFormatError, reaches decode's catch-all (an internal error the checks
missed), or decodes to a chunk that does not survive a re-encode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gitruns.chunk import decode_chunk, decode_digests, encode_chunk
    from gitruns.errors import ChunkFormatError

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"
DEFAULT_RUNS = 200_000


def check_refusal(exc: ChunkFormatError, source: str) -> None:
    """A refusal must name the source and come from a check, not the catch-all."""
    if source not in str(exc):
        raise AssertionError(f"message does not name the source: {exc}")
    if exc.__cause__ is not None:
        raise AssertionError(f"an internal error reached the catch-all: {exc}")


def test_one_input(data: bytes) -> None:
    """Decode one input as a chunk and as a digests document."""
    try:
        chunk = decode_chunk(data, source="fuzz", verify=True)
    except ChunkFormatError as exc:
        check_refusal(exc, "fuzz")
    else:
        again = decode_chunk(encode_chunk(chunk), source="fuzz re-encoded")
        if again.steps.tobytes() != chunk.steps.tobytes():
            raise AssertionError("steps changed in a re-encode")
        if sorted(again.columns) != sorted(chunk.columns):
            raise AssertionError("columns changed in a re-encode")

    try:
        decode_digests(data, source="fuzz digests")
    except ChunkFormatError as exc:
        check_refusal(exc, "fuzz digests")


def main() -> None:
    """Run the fuzzer, seeded with the golden files, for a bounded number of inputs."""
    args = sys.argv[1:]
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in args):
        args.append(f"-runs={DEFAULT_RUNS}")
    # Seeds are read, never written: the run leaves no corpus behind.
    seeds = ",".join(str(p) for p in sorted(GOLDEN.glob("*.msgpack")))
    atheris.Setup([sys.argv[0], *args, f"-seed_inputs={seeds}"], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
