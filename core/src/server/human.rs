//! Serde glue for the `[limits]` sections: durations and sizes written with units
//! (`handshake_timeout = "10s"`, `relay_memory_per_region = "128MiB"`), read back as written.
//! Use with `#[serde(with = "aqueduct_core::server::human::duration")]`.

pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        aqueduct_proto::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&aqueduct_proto::format_duration(*d))
    }
}

pub mod size {
    use aqueduct_proto::Size;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }

    /// In bytes (`"134217728B"`) when the binary units would round it: read back exactly.
    pub fn serialize<S: Serializer>(size: &Size, s: S) -> Result<S::Ok, S::Error> {
        let text = size.to_string();
        match text.parse::<Size>() {
            Ok(back) if back == *size => s.serialize_str(&text),
            _ => s.serialize_str(&format!("{}B", size.0)),
        }
    }
}
