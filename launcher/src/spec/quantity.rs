//! Kubernetes resource quantities (`128Mi`, `1G`, `1.5Gi`, `500m`, `129e6`).
//!
//! Owns the grammar of `k8s.io/apimachinery/pkg/api/resource.Quantity` and
//! the exact conversion to integers, rounding up like `Quantity.Value()`.
//! Pure functions; called by the spec reader on any thread.

/// A parsed quantity, kept exact: `mantissa × 10^decimal_exponent × 2^binary_exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    decimal_exponent: i32,
    binary_exponent: u32,
}

/// Why a string is not a quantity, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is not a Kubernetes quantity (expected a number with an optional suffix such as Ki, Mi, Gi, k, M, G or e6)")]
    Format,
    #[error("has too many digits for vmpod to represent exactly")]
    TooPrecise,
    #[error("is out of range")]
    OutOfRange,
    #[error("must not be negative")]
    Negative,
}

const MAX_MANTISSA_DIGITS: usize = 36;
const MAX_EXPONENT: i32 = 64;

impl Quantity {
    /// Parses a quantity exactly as Kubernetes accepts it.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        let (mantissa, fraction_digits) = parse_number(number)?;
        let (suffix_decimal, binary_exponent) = parse_suffix(suffix)?;
        let decimal_exponent = suffix_decimal - fraction_digits;
        Ok(Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            decimal_exponent,
            binary_exponent,
        })
    }

    /// The value as a whole number, rounded up (Kubernetes' `Value()`),
    /// for quantities that must not be negative.
    pub fn to_u64_ceil(self) -> Result<u64, QuantityError> {
        if self.negative {
            return Err(QuantityError::Negative);
        }
        let scaled = self
            .mantissa
            .checked_mul(
                1u128
                    .checked_shl(self.binary_exponent)
                    .ok_or(QuantityError::OutOfRange)?,
            )
            .ok_or(QuantityError::OutOfRange)?;
        let value = if self.decimal_exponent >= 0 {
            let factor = 10u128
                .checked_pow(self.decimal_exponent.unsigned_abs())
                .ok_or(QuantityError::OutOfRange)?;
            scaled
                .checked_mul(factor)
                .ok_or(QuantityError::OutOfRange)?
        } else {
            match 10u128.checked_pow(self.decimal_exponent.unsigned_abs()) {
                Some(divisor) => scaled.div_ceil(divisor),
                // 10^39 and beyond exceed any u128 numerator: the value is in (0, 1).
                None => u128::from(scaled != 0),
            }
        };
        u64::try_from(value).map_err(|_| QuantityError::OutOfRange)
    }
}

/// `<digits> | <digits>.<digits> | <digits>. | .<digits>` → (mantissa, digits after the point).
fn parse_number(number: &str) -> Result<(u128, i32), QuantityError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError::Format);
    }
    let digits = whole.trim_start_matches('0').len() + fraction.len();
    if digits > MAX_MANTISSA_DIGITS {
        return Err(QuantityError::TooPrecise);
    }
    let mut mantissa: u128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa * 10 + u128::from(digit - b'0');
    }
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| QuantityError::TooPrecise)?;
    Ok((mantissa, fraction_digits))
}

/// Suffix → (power of ten, power of two).
fn parse_suffix(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let known = match suffix {
        "" => Some((0, 0)),
        "n" => Some((-9, 0)),
        "u" => Some((-6, 0)),
        "m" => Some((-3, 0)),
        "k" => Some((3, 0)),
        "M" => Some((6, 0)),
        "G" => Some((9, 0)),
        "T" => Some((12, 0)),
        "P" => Some((15, 0)),
        "E" => Some((18, 0)),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        _ => None,
    };
    if let Some(exponents) = known {
        return Ok(exponents);
    }
    // Decimal exponent: "e" or "E" followed by a signed integer.
    let exponent = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or(QuantityError::Format)?;
    let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Format);
    }
    let value: i32 = exponent.parse().map_err(|_| QuantityError::OutOfRange)?;
    if value.abs() > MAX_EXPONENT {
        return Err(QuantityError::OutOfRange);
    }
    Ok((value, 0))
}

/// Formats a byte count the way a person reads it: `512Mi`, `1536Ki`, `1000000000`.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Result<u64, QuantityError> {
        Quantity::parse(text)?.to_u64_ceil()
    }

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(bytes("128Mi"), Ok(128 << 20));
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("2k"), Ok(2000));
        assert_eq!(bytes("1Ki"), Ok(1024));
        assert_eq!(bytes("7Ei"), Ok(7 << 60));
        assert_eq!(bytes("128974848"), Ok(128_974_848));
    }

    #[test]
    fn fractions_exponents_and_rounding_up() {
        assert_eq!(bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(bytes("129e6"), Ok(129_000_000));
        assert_eq!(bytes("129E6"), Ok(129_000_000));
        assert_eq!(bytes("1e-3"), Ok(1));
        assert_eq!(
            bytes("128m"),
            Ok(1),
            "milli-bytes round up like Quantity.Value()"
        );
        assert_eq!(bytes("500m"), Ok(1));
        assert_eq!(bytes("1500m"), Ok(2));
        assert_eq!(bytes(".5"), Ok(1));
        assert_eq!(bytes("2."), Ok(2));
        assert_eq!(bytes("+3"), Ok(3));
        assert_eq!(bytes("0"), Ok(0));
        assert_eq!(bytes("-0"), Ok(0));
        assert_eq!(bytes("1e-60"), Ok(1));
    }

    #[test]
    fn exa_suffix_is_not_an_exponent() {
        assert_eq!(bytes("1E"), Ok(1_000_000_000_000_000_000));
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "12Q", "Mi", "1 Mi", " 1", "1mi", "1MI", "1.2.3", ".", "1e", "1e+", "1ee3", "0x10",
            "1KiB", "--1", "1Mi ", "1e3.5", "١٢",
        ] {
            assert_eq!(bytes(bad), Err(QuantityError::Format), "{bad:?}");
        }
    }

    #[test]
    fn rejects_negative_and_huge_values() {
        assert_eq!(bytes("-1Mi"), Err(QuantityError::Negative));
        assert_eq!(bytes("16Ei"), Err(QuantityError::OutOfRange));
        assert_eq!(bytes("1e65"), Err(QuantityError::OutOfRange));
        assert_eq!(bytes("1e99999999999"), Err(QuantityError::OutOfRange));
        assert_eq!(bytes(&"9".repeat(40)), Err(QuantityError::TooPrecise));
    }

    #[test]
    fn formats_bytes_with_the_largest_exact_binary_suffix() {
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_bytes(1_000_000_000), "1000000000");
        assert_eq!(format_bytes(0), "0");
    }
}
