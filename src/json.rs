//! JSON helpers shared by the parsers of untrusted bodies: `Object<T>` reads a derived struct
//! from a JSON object only; `Unique` reads a document whose objects never name a member twice.
//! No I/O.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
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
    /// Parses `body` as a JSON object with unique member names at every depth. The tree may
    /// take at most [`tree_bytes_max`] of memory (estimated as it is built): `[0,0,0,…]`
    /// takes about forty times its text in `Value`s, so a body under its cap could still ask
    /// for gigabytes.
    pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, UniqueError> {
        let limit = tree_bytes_max(body.len());
        let budget = Budget(Cell::new(limit));
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let read = UniqueSeed(&budget).deserialize(&mut deserializer).and_then(|value| {
            deserializer.end()?;
            Ok(value)
        });
        match read {
            Ok(Value::Object(object)) => Ok(object),
            Ok(_) => Err(UniqueError::NotAnObject),
            Err(e) if e.to_string().starts_with(DUPLICATE) => Err(UniqueError::DuplicateMember),
            Err(e) if e.to_string().starts_with(PRIVATE) => Err(UniqueError::ReservedMember),
            Err(e) if e.to_string().starts_with(TOO_LARGE) => Err(UniqueError::TooLarge { limit }),
            Err(e) => Err(UniqueError::Syntax(describe_json_error(&e))),
        }
    }
}

/// The least memory a body's tree may take, whatever its size.
pub(crate) const TREE_BYTES_FLOOR: usize = 64 << 20;

/// The memory a tree read from a body of `body_bytes` may take: four times the body (a body
/// of long strings takes about its own size), and at least [`TREE_BYTES_FLOOR`] (many small
/// bind values take tens of times theirs: the floor holds about 800,000 short ones, a dozen
/// times the inline array binds the Python driver sends before it binds through a stage).
pub(crate) fn tree_bytes_max(body_bytes: usize) -> usize {
    body_bytes.saturating_mul(4).max(TREE_BYTES_FLOOR)
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
    /// The document would take more memory than its reader allows (too many values).
    #[error("the JSON document holds too many values (over {limit} bytes once read)")]
    TooLarge {
        /// The memory the tree may take, in bytes.
        limit: usize,
    },
}

const DUPLICATE: &str = "duplicate member name";
const PRIVATE: &str = "a member name serde_json reserves";
const TOO_LARGE: &str = "the tree is over its memory budget";
/// Member names serde_json's `Value` reads as instructions (`$serde_json::private::RawValue`
/// makes it parse the member's string as JSON): a body holding one would read one way here and
/// another wherever the gateway reads it again as a `Value`.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// Read alone (a token's claims, within a capped head), the tree may take [`TREE_BYTES_FLOOR`].
impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let budget = Budget(Cell::new(TREE_BYTES_FLOOR));
        UniqueSeed(&budget).deserialize(deserializer).map(Unique)
    }
}

/// What is left of a tree's memory budget, in bytes.
struct Budget(Cell<usize>);

impl Budget {
    /// Takes `bytes` from the budget, or refuses the document.
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.0.get().checked_sub(bytes) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(TOO_LARGE)),
        }
    }
}

/// A value's own size in a tree (an array's element is its `Vec` slot), and an object
/// member's with its name and an index entry. A `Vec`'s spare capacity is not counted.
const VALUE_BYTES: usize = std::mem::size_of::<Value>();
const MEMBER_BYTES: usize = std::mem::size_of::<String>() + VALUE_BYTES + 2 * std::mem::size_of::<usize>();

/// Reads one value into a tree, refusing a member named twice and a tree over the budget.
struct UniqueSeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for UniqueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON whose objects have unique member names")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.take(VALUE_BYTES)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.take(VALUE_BYTES)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.take(VALUE_BYTES)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.take(VALUE_BYTES)?;
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.take(VALUE_BYTES + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.take(VALUE_BYTES + v.capacity())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take(VALUE_BYTES)?;
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        self.0.take(VALUE_BYTES)?;
        let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
        while let Some(item) = access.next_element_seed(UniqueSeed(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        self.0.take(VALUE_BYTES)?;
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            self.0.take(MEMBER_BYTES + name.capacity())?;
            if map.contains_key(&name) {
                // The error text must not echo the name: it comes from the agent.
                return Err(de::Error::custom(DUPLICATE));
            }
            if name.starts_with(SERDE_JSON_PRIVATE) {
                return Err(de::Error::custom(PRIVATE));
            }
            let value = access.next_value_seed(UniqueSeed(self.0))?;
            map.insert(name, value);
        }
        Ok(Value::Object(map))
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
        // A tree over its budget is refused before it is built: a body of a few megabytes
        // of `0,` would take about forty times that, and a long string its own size.
        let zeros = |n: usize| format!("{{\"sqlText\":\"select 1\",\"x\":[{}0]}}", "0,".repeat(n));
        let fits = TREE_BYTES_FLOOR / VALUE_BYTES - 16;
        assert!(Unique::object(zeros(fits).as_bytes()).is_ok());
        let refused = Unique::object(zeros(TREE_BYTES_FLOOR / VALUE_BYTES).as_bytes());
        assert_eq!(refused, Err(UniqueError::TooLarge { limit: TREE_BYTES_FLOOR }));
        let long = format!("{{\"sqlText\":\"{}\"}}", "x".repeat(TREE_BYTES_FLOOR));
        assert!(Unique::object(long.as_bytes()).is_ok(), "four times the body fits a long string");
        // The error never echoes the body's text.
        let secret = r#"{"sk-live-SECRET":1,"sk-live-SECRET":2}"#;
        assert!(!Unique::object(secret.as_bytes()).unwrap_err().to_string().contains("SECRET"));
    }
}
