//! f64 values in JSON that read back bit for bit, for checkpoints: a resumed run must end with the
//! same history as one that never stopped, so its partial loss sums and the history so far must
//! survive the round trip exactly, infinities included (early stopping starts from `inf`).
//!
//! Each value is written as a string holding Rust's shortest representation that parses back to
//! the same `f64` (`"0.1"`, `"-3.5e-7"`, `"inf"`, `"NaN"`). A JSON number would not do: JSON has
//! no infinity or NaN, and parsers are free to round long decimals. Use with
//! `#[serde(with = "exact")]` (or `exact::option` for an `Option<f64>`).

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("'{text}' is not a number")))
}

/// The same for `Option<f64>` (`null` for `None`).
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => super::serialize(x, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("'{text}' is not a number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        a: f64,
        #[serde(with = "super::option")]
        b: Option<f64>,
    }

    #[test]
    fn every_value_reads_back_bit_for_bit() {
        let vals = [
            0.1,
            1.0 / 3.0,
            -2.5e-300,
            f64::MIN_POSITIVE / 3.0,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            123_456_789.123_456_79,
            -0.0,
        ];
        for a in vals {
            for b in [None, Some(a), Some(f64::NAN)] {
                let json = serde_json::to_string(&T { a, b }).unwrap();
                let back: T = serde_json::from_str(&json).unwrap();
                assert_eq!(back.a.to_bits(), a.to_bits(), "{json}");
                match (b, back.b) {
                    (None, None) => {}
                    (Some(x), Some(y)) if x.is_nan() => assert!(y.is_nan()),
                    (Some(x), Some(y)) => assert_eq!(x.to_bits(), y.to_bits(), "{json}"),
                    other => panic!("{other:?} from {json}"),
                }
            }
        }
        let bad: Result<T, _> = serde_json::from_str(r#"{"a": "x1", "b": null}"#);
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("'x1' is not a number"));
    }
}
