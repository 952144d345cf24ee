"""Fixed-point types that carry the artifact's integers exactly through hls4ml.

Contract: a tensor of integers ``q`` with exponent ``e`` (real value ``q * 2**e``) is
held in ``ap_fixed<bits, bits + e>`` (``ap_ufixed`` when unsigned), whose LSB is
``2**e``, so every integer of the declared width is exact.

A requantization (rounding right shift by ``s`` with round-half-to-even, then clamp to
``[lo, hi]``) is the *assignment* of the accumulator (LSB ``2**e_acc``) to a result type
with LSB ``2**(e_acc + s)``, quantization mode ``AP_RND_CONV`` (convergent rounding =
round half to even) and overflow mode ``AP_SAT`` (or ``AP_SAT_SYM``) whose range is
exactly ``[lo, hi]``. ap_fixed rounds first and saturates second, as the golden model
does; an unsigned result type saturates negatives to 0, which is the ReLU.
"""
from __future__ import annotations

from hls4ml.model.types import FixedPrecisionType, RoundingMode, SaturationMode

from artifact import int_range

__all__ = ["HLSConversionError", "fixed", "ap_string", "requant_type", "exponent_of", "accumulator_type",
           "check_shift_readable"]


class HLSConversionError(ValueError):
    """The artifact cannot be expressed exactly in hls4ml. The message is one line."""


def fixed(bits: int, exponent: int, signed: bool, rounding: str | None = None,
          saturation: str | None = None) -> FixedPrecisionType:
    """``ap_(u)fixed<bits, bits + exponent[, rounding, saturation]>``: integers of ``bits`` bits times ``2**exponent``.

    Always a FixedPrecisionType, never an IntegerPrecisionType: hls4ml picks its
    ternary product for 2-bit signed *integer* weights (see docs/hls4ml.md).
    """
    return FixedPrecisionType(int(bits), int(bits) + int(exponent), bool(signed),
                              RoundingMode.from_string(rounding) if rounding else None,
                              SaturationMode.from_string(saturation) if saturation else None)


def ap_string(precision: FixedPrecisionType) -> str:
    """The C++ spelling, e.g. ``ap_ufixed<8,4,AP_RND_CONV,AP_SAT,0>`` (what hls4ml parses back)."""
    u = "" if precision.signed else "u"
    return (f"ap_{u}fixed<{precision.width},{precision.integer},AP_{precision.rounding_mode},"
            f"AP_{precision.saturation_mode},{precision.saturation_bits}>")


def exponent_of(precision: FixedPrecisionType) -> int:
    """The exponent (LSB weight is ``2**exponent``) of a fixed-point type."""
    return precision.integer - precision.width


def requant_type(clamp, exponent: int, where: str) -> FixedPrecisionType:
    """Result type of a requantization whose output integers are clamped to ``clamp``.

    ``exponent`` is the output's exponent (accumulator exponent + shift). Raises
    HLSConversionError when ``[lo, hi]`` is not the saturation range of any ap type
    (hls4ml has no exact integer clip layer).
    """
    lo, hi = (int(v) for v in clamp)
    if lo > hi:
        raise HLSConversionError(f"{where}: clamp [{lo}, {hi}] is empty")
    for bits in range(1, 65):
        for signed in (False, True):
            if int_range(bits, signed) == (lo, hi):
                return fixed(bits, exponent, signed, "RND_CONV", "SAT")
        if bits >= 2 and (lo, hi) == (-(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1):
            return fixed(bits, exponent, True, "RND_CONV", "SAT_SYM")
    raise HLSConversionError(f"{where}: clamp [{lo}, {hi}] is not the saturation range of an ap_fixed/ap_ufixed type "
                             f"(hls4ml has no exact integer clip layer); see docs/hls4ml.md")


def accumulator_type(bits: int, exponent: int, shift: int) -> FixedPrecisionType:
    """Signed accumulator type for a requantization by ``shift``: ``bits`` wide, widened to
    ``shift`` bits when the shift is larger. ap_fixed's convergent rounding reads the bit
    just below the result's LSB and aborts ("Attempting to read bit beyond MSB") when that
    bit lies above the source's MSB; a sign-extended (wider) source holds the same value."""
    return fixed(max(int(bits), int(shift)), exponent, True)


def check_shift_readable(source_bits: int, shift: int, where: str) -> None:
    """Refuse a rounding right shift past the MSB of a source type the converter does not
    choose (hls4ml's Merge and Activation layers read their inputs' types directly)."""
    if shift > source_bits:
        raise HLSConversionError(f"{where}: shift {shift} exceeds the {source_bits}-bit source (every output would be "
                                 f"the clamp of 0); ap_fixed's rounding cannot read past the MSB, so hls4ml has no "
                                 f"exact form of it")
