//! JSON helpers shared by the parsers of untrusted bodies: `Object<T>` reads a derived struct
//! from a JSON object only. No I/O.

use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

/// `T` read only from a JSON object. serde's derived structs also read a JSON array, by
/// position (`["select 1"]` as `{"sqlText": "select 1"}`), which Snowflake, drivers and
/// identity providers do not: what the gateway reads must be what its peers would read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn reads_objects_and_refuses_arrays() {
        let read = |text: &str| serde_json::from_str::<Object<Pair>>(text).map(|Object(pair)| pair);
        assert_eq!(read(r#"{"a":1,"b":"x","c":[1]}"#).unwrap(), Pair { a: 1, b: Some("x".into()) });
        // The derived struct alone takes the array by position; the wrapper does not.
        assert!(serde_json::from_str::<Pair>(r#"[1,"x"]"#).is_ok());
        for refused in [r#"[1,"x"]"#, "1", r#""a""#, "null"] {
            assert!(read(refused).is_err(), "read: {refused}");
        }
    }
}
