//! Persisted states as types: [`text_enum!`] declares an enum stored as text (its
//! database `CHECK` lists the same words) and maps it to and from the database, JSON,
//! OpenAPI and metric labels in one place.

/// Declares an enum whose variants are stored, served and labelled as fixed words:
///
/// ```ignore
/// text_enum! {
///     /// How applying a stored delivery ended.
///     pub enum Outcome { Pending = "pending", Applied = "applied" }
/// }
/// ```
///
/// It gets `as_str`, `parse` (exact words only; unknown words are `None`, never a
/// default), `ALL`, `Display`, serde, `utoipa::ToSchema` (a string enum), sqlx encoding
/// as `text` and `text[]`, and a Prometheus label value.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            // `tt`, not `literal`: a `literal` fragment reaches derive macros wrapped in an
            // invisible group, and utoipa then ignores `#[serde(rename = ...)]`, describing
            // variant names instead of the words served.
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
        )]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The variant stored as `word`; `None` for any other word.
            pub fn parse(word: &str) -> Option<$name> {
                match word {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The words, comma-separated (for messages and documentation).
            pub fn words() -> String {
                [$($text),+].join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                $name::parse(word).ok_or_else(|| {
                    format!(
                        "{word:?} is not a {} ({})",
                        stringify!($name),
                        $name::words()
                    )
                    .into()
                })
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

#[cfg(test)]
#[allow(dead_code)] // The probe's other generated items are not needed here.
mod tests {
    crate::text_enum! {
        /// A probe.
        pub enum Probe {
            First = "first_word",
            Second = "second",
        }
    }

    #[test]
    fn the_openapi_enum_lists_the_served_words() {
        let schema = serde_json::to_value(<Probe as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["first_word", "second"]));
        assert_eq!(
            serde_json::to_value(Probe::First).unwrap(),
            serde_json::json!("first_word")
        );
        assert_eq!(<Probe as utoipa::ToSchema>::name(), "Probe");
    }
}
