//! Stored layouts that evolve: every stored type names its layout version
//! and the layout before it, so a newer binary reads every older store.
//!
//! The model is garage's `migrate`: each layout is its own Rust type. A
//! record's envelope says which layout its body was written in; decoding
//! an older body decodes it as that older type and upgrades it one step at
//! a time (`V1 -> V2 -> V3`) until it is the current type. Records are
//! rewritten in the current layout the next time they are written.
//!
//! Bodies are bincode, which is not self-describing: adding, removing,
//! reordering or retyping a field is a new layout. Appending a variant to
//! an enum is not (old bodies never name it). The test
//! `an_added_field_reads_old_bytes` in `store.rs` shows a new layout.

use serde::de::DeserializeOwned;

/// A stored layout of a type.
pub trait Versioned: DeserializeOwned + Sized {
    /// This layout's number: 1 for a type's first layout.
    const VERSION: u32;
    /// The layout before this one; [`Initial`] for the first.
    type Previous: Versioned;
    /// Brings a body of the previous layout to this one.
    fn upgrade(previous: Self::Previous) -> Self;
}

/// What precedes a type's first layout: nothing (it has no values).
#[derive(Debug)]
pub enum Initial {}

impl<'de> serde::Deserialize<'de> for Initial {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "no layout precedes a type's first",
        ))
    }
}

impl Versioned for Initial {
    const VERSION: u32 = 0;
    type Previous = Initial;
    fn upgrade(previous: Initial) -> Initial {
        previous
    }
}

/// Decodes a body written in `layout` as the current layout of `T`.
pub(crate) fn decode_layout<T: Versioned>(layout: u32, bytes: &[u8]) -> Result<T, String> {
    use std::cmp::Ordering;
    match layout.cmp(&T::VERSION) {
        Ordering::Equal => {
            bincode::serde::decode_from_slice(bytes, crate::record::bincode_config())
                .map(|(v, _)| v)
                .map_err(|e| format!("layout {layout}: {e}"))
        }
        Ordering::Less if T::VERSION > 0 => {
            decode_layout::<T::Previous>(layout, bytes).map(T::upgrade)
        }
        _ => Err(format!(
            "layout {layout} is newer than this build understands ({})",
            T::VERSION
        )),
    }
}

/// Declares types whose current layout is their first:
/// `warden_storage::first_layout!(User, Org);`
#[macro_export]
macro_rules! first_layout {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::Versioned for $t {
            const VERSION: u32 = 1;
            type Previous = $crate::Initial;
            fn upgrade(previous: $crate::Initial) -> Self {
                match previous {}
            }
        }
    )+};
}
