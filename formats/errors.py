"""The one error type every decoder in formats/ raises.

A decoder never lets a struct.error, IndexError or UnicodeDecodeError escape:
it converts it into a DecodeError naming the structure being read and the
absolute offset in the buffer it was handed, so that the pipeline above can
turn it into a located error record and go on.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Malformed, truncated or hostile input.

    structure: the spec's name of what was being decoded (e.g. "ClassPart.PropertyLookupTable")
    offset: absolute byte offset in the buffer given to the top-level decoder
    reason: what was expected / what was wrong
    """

    def __init__(self, structure: str, offset: int, reason: str):
        self.structure = structure
        self.offset = offset
        self.reason = reason
        super().__init__(f"{structure} at offset {offset}: {reason}")

    def to_record(self) -> dict:
        return {"structure": self.structure, "offset": self.offset, "reason": self.reason}

    def rebased(self, base: int) -> "DecodeError":
        """The same error, its offset moved from a sub-buffer starting at `base`
        to the enclosing buffer."""
        return DecodeError(self.structure, self.offset + base, self.reason)


class EncodeError(ValueError):
    """A model object that cannot be encoded (e.g. a value that does not fit its CIM type)."""
