//! `qapi_struct!`: a QAPI struct written once, as in the schema.
//!
//! ```text
//! qapi_struct! {
//!     /// doc
//!     pub struct NetdevHubPortOptions {
//!         /// hub identifier number
//!         hubid: req int32 = "hubid",
//!         netdev: opt str = "netdev",
//!     }
//! }
//! ```
//!
//! Each member is `field: PRESENCE KIND = "wire-name"`, PRESENCE `req` or `opt` (the
//! schema's `*`), KIND the schema type: `str`, `bool`, `int`, `int32`, `uint16`,
//! `uint32`, `uint64`, `size`, `StrList` (`['str']`), `StringList` (`['String']`), `IntList` (`['int']`),
//! or `(Type)`: a nested object whose type implements `QapiStruct` (a struct or a
//! flat union such as `SocketAddress`), read from a JSON object or from dotted keys
//! (`addr.port=...`) and written back as an object.
//! The macro emits the struct (an `opt` member is an `Option`) and its
//! [`QapiStruct`](crate::qapi::QapiStruct) impl, which reads members in schema order
//! from any [`Input`](crate::qapi::Input) and writes back exactly those that are set.

macro_rules! qapi_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $presence:ident $kind:tt = $wire:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[doc = concat!("\n\nQAPI member `", $wire, "`.")]
                pub $field: qapi_struct!(@ty $presence $kind),
            )*
        }

        impl $crate::qapi::QapiStruct for $name {
            fn read_members<I: $crate::qapi::Input + ?Sized>(
                input: &mut I,
            ) -> ::core::result::Result<Self, $crate::qapi::QapiError> {
                $( let $field = qapi_struct!(@read input $presence $kind $wire); )*
                Ok(Self { $($field),* })
            }

            fn write_members(
                &self,
                out: &mut ::serde_json::Map<String, ::serde_json::Value>,
            ) {
                $( qapi_struct!(@write out $presence $kind $wire &self.$field); )*
            }
        }
    };

    (@ty req $kind:tt) => { qapi_struct!(@rust $kind) };
    (@ty opt $kind:tt) => { Option<qapi_struct!(@rust $kind)> };

    (@rust ($t:ident)) => { $t };
    (@rust str) => { String };
    (@rust bool) => { bool };
    (@rust int) => { i64 };
    (@rust int32) => { i32 };
    (@rust uint16) => { u16 };
    (@rust uint32) => { u32 };
    (@rust uint64) => { u64 };
    (@rust size) => { u64 };
    (@rust StrList) => { Vec<String> };
    (@rust StringList) => { Vec<String> };
    (@rust IntList) => { Vec<i64> };

    (@read $input:ident req $kind:tt $wire:literal) => {
        qapi_struct!(@take $input $kind $wire)?
    };
    (@read $input:ident opt $kind:tt $wire:literal) => {
        if $crate::qapi::Input::has($input, $wire) {
            Some(qapi_struct!(@take $input $kind $wire)?)
        } else {
            None
        }
    };

    (@take $input:ident ($t:ident) $wire:literal) => {
        $crate::qapi::take_struct::<$t, _>($input, $wire)
    };
    (@take $input:ident str $wire:literal) => { $input.take_str($wire) };
    (@take $input:ident bool $wire:literal) => { $input.take_bool($wire) };
    (@take $input:ident int $wire:literal) => { $input.take_i64($wire) };
    (@take $input:ident int32 $wire:literal) => { $input.take_i32($wire) };
    (@take $input:ident uint16 $wire:literal) => { $input.take_u16($wire) };
    (@take $input:ident uint32 $wire:literal) => { $input.take_u32($wire) };
    (@take $input:ident uint64 $wire:literal) => { $input.take_u64($wire) };
    (@take $input:ident size $wire:literal) => { $input.take_size($wire) };
    (@take $input:ident StrList $wire:literal) => { $input.take_str_list($wire) };
    (@take $input:ident StringList $wire:literal) => { $input.take_string_list($wire) };
    (@take $input:ident IntList $wire:literal) => { $input.take_int_list($wire) };

    (@write $out:ident req $kind:tt $wire:literal $v:expr) => {
        $out.insert($wire.to_string(), qapi_struct!(@value $kind $v));
    };
    (@write $out:ident opt $kind:tt $wire:literal $v:expr) => {
        if let Some(v) = $v {
            $out.insert($wire.to_string(), qapi_struct!(@value $kind v));
        }
    };

    (@value ($t:ident) $v:expr) => {
        ::serde_json::Value::Object($crate::qapi::QapiStruct::to_qmp($v))
    };
    (@value str $v:expr) => { ::serde_json::Value::String(::core::clone::Clone::clone($v)) };
    (@value StrList $v:expr) => {
        ::serde_json::Value::Array(
            $v.iter().map(|s| ::serde_json::Value::String(s.clone())).collect(),
        )
    };
    (@value StringList $v:expr) => {
        ::serde_json::Value::Array($v.iter().map(|s| ::serde_json::json!({ "str": s })).collect())
    };
    (@value IntList $v:expr) => {
        ::serde_json::Value::Array($v.iter().map(|i| ::serde_json::Value::from(*i)).collect())
    };
    // Every other kind is a Copy scalar with a `From` conversion into a JSON value.
    (@value $kind:ident $v:expr) => { ::serde_json::Value::from(*$v) };
}

pub(crate) use qapi_struct;
