//! JSON helpers shared by the parsers of untrusted bodies: `Object<T>` reads a derived struct
//! from a JSON object only; `Unique` reads a document whose objects never name a member twice.
//! No I/O.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

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

/// A JSON error's category and position, never the input itself (it may hold secrets).
pub(crate) fn describe_json_error(error: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", error.classify(), error.line(), error.column())
}

/// A JSON value whose objects, at every depth, name each member once.
///
/// serde_json keeps the last of two members with the same name and other readers may keep the
/// first: a body the gateway rewrites and forwards, while reviewers and the recording read the
/// agent's own text of it, must not mean two things. Such a body is refused outright.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unique(pub(crate) Value);

impl Unique {
    /// Parses `body` as a JSON object with unique member names at every depth.
    pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, UniqueError> {
        match serde_json::from_slice::<Unique>(body) {
            Ok(Unique(Value::Object(object))) => Ok(object),
            Ok(_) => Err(UniqueError::NotAnObject),
            Err(e) if e.to_string().starts_with(DUPLICATE) => Err(UniqueError::DuplicateMember),
            Err(e) if e.to_string().starts_with(PRIVATE) => Err(UniqueError::ReservedMember),
            Err(e) => Err(UniqueError::Syntax(describe_json_error(&e))),
        }
    }
}

/// Why a body is not a JSON object with unique member names. Never echoes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UniqueError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// An object names a member twice.
    #[error("an object names a member twice")]
    DuplicateMember,
    /// An object has a member whose name serde_json reserves.
    #[error("an object has a member named like serde_json's private ones")]
    ReservedMember,
}

const DUPLICATE: &str = "duplicate member name";
const PRIVATE: &str = "a member name serde_json reserves";
/// Member names serde_json's `Value` reads as instructions (`$serde_json::private::RawValue`
/// makes it parse the member's string as JSON): a body holding one would read one way here and
/// another wherever the gateway reads it again as a `Value`.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueVisitor;

        impl<'de> Visitor<'de> for UniqueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON whose objects have unique member names")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number JSON cannot hold"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
                let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(Unique(item)) = access.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    if map.contains_key(&name) {
                        // The error text must not echo the name: it comes from the agent.
                        return Err(de::Error::custom(DUPLICATE));
                    }
                    if name.starts_with(SERDE_JSON_PRIVATE) {
                        return Err(de::Error::custom(PRIVATE));
                    }
                    let Unique(value) = access.next_value()?;
                    map.insert(name, value);
                }
                Ok(Value::Object(map))
            }
        }

        deserializer.deserialize_any(UniqueVisitor).map(Unique)
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

    #[test]
    fn unique_reads_what_serde_json_reads_when_no_member_repeats() {
        for text in [
            r#"{}"#,
            r#"{"a":1,"b":[true,false,null,-3,18446744073709551615,1.5e300,"\u00e9x"],"c":{"a":{"a":[]}}}"#,
            r#"{"z":1,"a":2,"m":{"y":0.1,"b":-0.0}}"#,
        ] {
            let expected: Map<String, Value> = serde_json::from_str(text).unwrap();
            let read = Unique::object(text.as_bytes()).unwrap();
            assert_eq!(read, expected, "{text}");
            // The order of members is kept, so the rewritten body reads as the agent wrote it.
            assert_eq!(serde_json::to_string(&read).unwrap(), serde_json::to_string(&expected).unwrap());
        }
    }

    #[test]
    fn unique_refuses_a_member_named_twice_at_any_depth() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"b":{"1":{"value":"42"},"1":{"value":"43"}}}"#,
            r#"{"b":[{"x":1},{"x":1,"y":2,"x":3}]}"#,
            r#"{"b":[[[{"k":{"q":1,"q":2}}]]]}"#,
        ] {
            assert_eq!(Unique::object(text.as_bytes()), Err(UniqueError::DuplicateMember), "{text}");
        }
        // A name serde_json's Value reads as an instruction, at any depth.
        for text in [
            r#"{"x":{"$serde_json::private::RawValue":"!"}}"#,
            r#"{"$serde_json::private::RawValue":"{}"}"#,
            r#"{"a":[{"$serde_json::private::Number":"1"}]}"#,
        ] {
            assert_eq!(Unique::object(text.as_bytes()), Err(UniqueError::ReservedMember), "{text}");
        }
        // Same names in sibling objects are not duplicates.
        assert!(Unique::object(br#"{"a":{"x":1},"b":{"x":1},"c":[{"x":1},{"x":2}]}"#).is_ok());
        assert_eq!(Unique::object(b"[1]"), Err(UniqueError::NotAnObject));
        assert!(matches!(Unique::object(b"{\"a\":"), Err(UniqueError::Syntax(_))));
        // The error never echoes the body's text.
        let secret = r#"{"sk-live-SECRET":1,"sk-live-SECRET":2}"#;
        assert!(!Unique::object(secret.as_bytes()).unwrap_err().to_string().contains("SECRET"));
    }
}
